"""Helpers for the dashboard, metrics and alert tests: a ``sluice dashboard`` process, a local
webhook receiver, a Prometheus scrape, the dashboard test app's data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, wait_for

DASH_APP = "tests.apps.dash_app:app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dashboard:
    """``sluice [--app APP] dashboard`` as a real process on a free port."""

    def __init__(self, db_url: str, *, token: str | None, app: str | None = None,
                 env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "SLUICE_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT),
                    **(env or {})}
        full_env.pop("SLUICE_DASHBOARD_TOKEN", None)
        if token:
            full_env["SLUICE_DASHBOARD_TOKEN"] = token
        args = [sys.executable, "-m", "sluice", *(["--app", app] if app else []), "dashboard",
                "--port", str(self.port)]
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(args, env=full_env, cwd=str(ROOT), stdout=out,
                                     stderr=subprocess.STDOUT)
        wait_for(self._up, 30, 0.1, message=f"the dashboard on port {self.port}")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the dashboard exited with {self.proc.returncode}")
        try:
            return httpx.get(self.url + "/jobs", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def dashboard(db_url: str, **kwargs: Any) -> Iterator[Dashboard]:
    d = Dashboard(db_url, **kwargs)
    try:
        yield d
    finally:
        d.stop()


class Webhook:
    """A local HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"body": json.loads(body),
                                 "content_type": self.headers.get("Content-Type")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r["body"] for r in list(self.received) if kind is None or r["body"]["kind"] == kind]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET a Prometheus endpoint and parse it with prometheus_client's own parser:
    ``{sample name: {sorted label pairs: value}}``."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str,
          **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))
