"""The dashboard's application factory, its templates and its token check.

``create_app(store_url)`` returns a Starlette app: server-rendered pages (Jinja2), a little
vendored JavaScript for the live charts (uPlot), ``/metrics`` for Prometheus. Reading needs
no login. Actions (trigger, pause, resume, rate, retries) need the token given as ``token=``
or ``SLUICE_DASHBOARD_TOKEN``: sent as ``Authorization: Bearer …`` or by logging in on the page
(an HttpOnly, SameSite=Strict cookie). Without a token configured the dashboard is read-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from sluice.config import Settings
from sluice.store import Store
from sluice.web.sampler import Sampler

HERE = Path(__file__).parent
COOKIE = "sluice_dashboard"
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.autoescape = select_autoescape(default=True)


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def _secs(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


templates.env.filters.update(when=_when, num=_num, secs=_secs)


def cookie_value(token: str) -> str:
    """What the login cookie holds: a keyed hash of the token, never the token itself."""
    return hmac.new(token.encode(), b"sluice-dashboard-session", hashlib.sha256).hexdigest()


def authorised(request: Request) -> bool:
    token: str | None = request.app.state.token
    if not token:
        return False
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), cookie_value(token).encode())


def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    context.update(writable=bool(request.app.state.token), authorised=authorised(request),
                   now=request.app.state.store.clock())
    return templates.TemplateResponse(request, name, context, status_code=status)


def error_page(request: Request, status: int, message: str) -> Response:
    titles = {400: "Bad request", 401: "Token required", 403: "Read-only dashboard",
              404: "Not found", 405: "Method not allowed"}
    return render(request, "error.html", status, title=titles.get(status, "Error"),
                  message=message, code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_page(request, exc.status_code, str(exc.detail))


def create_app(store: Store | str, *, token: str | None = None, node_ttl: float | None = None,
               outboxes: list[Any] | None = None, sample_every: float = 1.0) -> Starlette:
    """The dashboard for ``store`` (a ``Store`` or a database URL). ``token`` defaults to
    ``SLUICE_DASHBOARD_TOKEN`` (none: read-only); ``node_ttl`` to the worker setting;
    ``outboxes`` are the app's outboxes, for the backlog page and metrics."""
    from sluice.web import actions, api, pages

    if isinstance(store, str):
        store = Store.open(store)
    ttl = node_ttl if node_ttl is not None else Settings.load().node_ttl
    sampler = Sampler(store, ttl, sample_every)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        sampler.start()
        try:
            yield
        finally:
            sampler.stop()

    routes = [*pages.routes, *actions.routes, *api.routes,
              Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.store = store
    app.state.token = token if token is not None else os.environ.get("SLUICE_DASHBOARD_TOKEN")
    app.state.node_ttl = ttl
    app.state.outboxes = list(outboxes or [])
    app.state.sampler = sampler
    return app
