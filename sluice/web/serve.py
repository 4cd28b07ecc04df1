"""``sluice dashboard``: serve the dashboard with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any

from sluice.config import Settings
from sluice.errors import ConfigError
from sluice.store import Store

log = logging.getLogger("sluice.web")


def serve(args: argparse.Namespace, store: Store, load_app: Callable[[str], Any]) -> int:
    try:
        import uvicorn

        from sluice.web.app import create_app
    except ImportError as exc:
        raise ConfigError(f"sluice dashboard needs the dashboard extra: "
                          f"pip install 'sluice[dashboard,metrics]' ({exc})") from None
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1-65535, got {args.port}")
    outboxes = list(load_app(args.app).outboxes) if args.app else []
    token = os.environ.get("SLUICE_DASHBOARD_TOKEN") or None
    app = create_app(store, token=token, node_ttl=Settings.load().node_ttl, outboxes=outboxes)
    mode = "actions need the token" if token else "read-only (no SLUICE_DASHBOARD_TOKEN)"
    log.info("dashboard on http://%s:%d/ (%s)", args.host, args.port, mode)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
