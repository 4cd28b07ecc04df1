"""The dashboard's actions: trigger, pause, resume, change a pipeline's rate, send parked
records and outbox messages back, log in and out. Each needs the token (401 without it; 403
when the dashboard has none configured and is read-only). A bad form value re-renders the page
with a message (400); it never reaches the store unchecked."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from sluice.app import resume_job, set_job
from sluice.errors import ConfigError
from sluice.pipeline.runtime import retry_dead
from sluice.web.app import COOKIE, authorised, cookie_value, error_page, render
from sluice.web.pages import job_or_404, job_page, parked_page, store_of

Handler = Callable[[Request, FormData], Response]
MAX_IDS = 1000


def action(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Check the token, read the form, then run the (sync) handler off the event loop."""
    from starlette.concurrency import run_in_threadpool

    async def endpoint(request: Request) -> Response:
        if not request.app.state.token:
            return error_page(request, 403, "This dashboard is read-only: start it with "
                              "SLUICE_DASHBOARD_TOKEN set to allow actions.")
        if not authorised(request):
            return error_page(request, 401, "This action needs the dashboard token: log in "
                              "first, or send it as 'Authorization: Bearer <token>'.")
        form = await request.form(max_files=0, max_fields=MAX_IDS + 10)
        return await run_in_threadpool(handler, request, form)

    return endpoint


def back(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def trigger(request: Request, form: FormData) -> Response:
    name = job_or_404(request, request.path_params["name"])["name"]
    run_id = store_of(request).run_trigger(name)
    return back(f"/runs/{run_id}")


def pause(request: Request, form: FormData) -> Response:
    name = job_or_404(request, request.path_params["name"])["name"]
    store_of(request).job_set_paused(name, True)
    return back(_next(form, f"/jobs/{name}"))


def resume(request: Request, form: FormData) -> Response:
    name = job_or_404(request, request.path_params["name"])["name"]
    resume_job(store_of(request), name)
    return back(_next(form, f"/jobs/{name}"))


def set_rate(request: Request, form: FormData) -> Response:
    job = job_or_404(request, request.path_params["name"])
    raw = str(form.get("qps", "")).strip()
    if job["kind"] != "pipeline":
        return job_page(request, f"{job['name']} is not a pipeline: it has no rate.", 400)
    try:
        qps = float(raw)
        set_job(store_of(request), job["name"], {"qps": qps})
    except (ValueError, ConfigError):
        return job_page(request, f"Rate must be a number of records per second > 0, "
                        f"got {raw[:40]!r}.", 400)
    return back(f"/jobs/{job['name']}")


def retry_parked(request: Request, form: FormData) -> Response:
    job = job_or_404(request, request.path_params["name"])
    ids = _ids(form)
    if ids is None:
        return job_page(request, "Record ids must be whole numbers.", 400)
    if not ids and form.get("all") != "1":
        return job_page(request, "Select parked records to retry, or retry all.", 400)
    run_id, _count = retry_dead(store_of(request), job["name"], ids or None)
    return back(f"/runs/{run_id}" if run_id else f"/jobs/{job['name']}")


def retry_outbox(request: Request, form: FormData) -> Response:
    table = request.path_params["table"]
    outbox = next((o for o in request.app.state.outboxes if o.table == table), None)
    if outbox is None:
        raise HTTPException(404, f"There is no outbox table {table!r} in this app.")
    ids = _ids(form)
    if ids is None:
        return parked_page(request, "Message ids must be whole numbers.", 400)
    if not ids and form.get("all") != "1":
        return parked_page(request, "Give message ids, or retry all.", 400)
    count = outbox.retry(None, all=True) if not ids else outbox.retry(ids)
    return parked_page(request, f"Outbox {table}: {count} message(s) due now.")


def _ids(form: FormData) -> list[int] | None:
    values = [str(v) for v in form.getlist("id")][:MAX_IDS]
    for text in str(form.get("ids", "")).replace(",", " ").split()[:MAX_IDS]:
        values.append(text)
    if not all(v.strip().isdigit() and len(v.strip()) < 19 for v in values):
        return None
    return [int(v) for v in values]


def _next(form: FormData, default: str) -> str:
    target = str(form.get("next", ""))
    # only paths of this site: never an open redirect
    return target if target.startswith("/") and not target.startswith("//") else default


async def login(request: Request) -> Response:
    token: str | None = request.app.state.token
    if request.method == "GET":
        return render(request, "login.html", next=request.query_params.get("next", "/jobs"))
    form = await request.form(max_files=0, max_fields=5)
    given = str(form.get("token", ""))
    nxt = _next(form, "/jobs")
    if not token:
        return error_page(request, 403, "This dashboard is read-only: no token is configured.")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return render(request, "login.html", 401, next=nxt, message="That token is not right.")
    response = back(nxt)
    response.set_cookie(COOKIE, cookie_value(token), httponly=True, samesite="strict",
                        max_age=12 * 3600)
    return response


async def logout(request: Request) -> Response:
    response = back("/jobs")
    response.delete_cookie(COOKIE)
    return response


def _post(path: str, handler: Handler) -> Route:
    return Route(path, action(handler), methods=["POST"])


routes: list[Any] = [
    _post("/jobs/{name:str}/trigger", trigger),
    _post("/jobs/{name:str}/pause", pause),
    _post("/jobs/{name:str}/resume", resume),
    _post("/jobs/{name:str}/rate", set_rate),
    _post("/jobs/{name:str}/parked/retry", retry_parked),
    _post("/outbox/{table:str}/retry", retry_outbox),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
]
