"""Alerts: what sluice tells an operator about, and the hook that receives them.

``app.on_alert(fn)`` registers a sink; with none registered, one log line is written per alert.
A sink that raises is logged and ignored: an alert must never stop a worker. Built-in sinks:
``log_sink`` and ``webhook(url)`` (an HTTP POST of the alert as JSON, sent off the caller's
thread).

Alerts pass through an ``AlertGate`` before the sinks: the first alert of a kind about one
subject goes out at once; more of the same within ``window`` seconds are held and summed up in
one summary alert at the end of the window (``details["suppressed"]`` says how many, and
``details["count"]`` adds up their counts, e.g. records parked). So a thousand parked records
are one alert plus one summary, never a thousand messages.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("sluice.alerts")

KINDS = ("run_failed", "record_parked", "message_parked", "firing_missed", "firing_late",
         "node_lost", "rate_unreachable")


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One alert. ``kind`` is a stable word: ``run_failed``, ``record_parked``, ``message_parked``,
    ``firing_missed``, ``firing_late``, ``node_lost``, ``rate_unreachable``."""

    kind: str
    subject: str  # the job, pipeline, node or outbox table it is about
    message: str  # one human line
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


AlertSink = Callable[[Alert], None]


def log_sink(alert: Alert) -> None:
    log.warning("alert %s %s: %s", alert.kind, alert.subject, alert.message)


def dispatch(sinks: list[AlertSink], alert: Alert) -> None:
    """Deliver ``alert`` to every sink (or the log when there is none), never raising."""
    for sink in sinks or [log_sink]:
        try:
            sink(alert)
        except Exception:
            log.exception("alert sink %r failed for %s alert on %s", sink, alert.kind,
                          alert.subject)


class AlertGate:
    """De-duplicates and rate-limits alerts per (kind, subject); see the module docstring."""

    def __init__(self, deliver: Callable[[Alert], None], window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deliver = deliver
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], float] = {}  # key -> end of its window
        self._held: dict[tuple[str, str], list[Alert]] = {}

    def offer(self, alert: Alert) -> None:
        key = (alert.kind, alert.subject)
        now = self.clock()
        with self._lock:
            end = self._open.get(key)
            if end is not None and now < end:
                self._held.setdefault(key, []).append(alert)
                return
            self._open[key] = now + self.window
        if self.window > 0:
            timer = threading.Timer(self.window, self._close, args=(key,))
            timer.daemon = True
            timer.start()
        self.deliver(alert)

    def flush(self) -> None:
        """Send the summaries of every open window now (e.g. when a worker stops)."""
        with self._lock:
            keys = list(self._held)
        for key in keys:
            self._close(key)

    def _close(self, key: tuple[str, str]) -> None:
        with self._lock:
            held = self._held.pop(key, [])
            if not held:
                self._open.pop(key, None)
                return
            self._open[key] = self.clock() + self.window  # the summary opens a new window
        timer = threading.Timer(self.window, self._close, args=(key,))
        timer.daemon = True
        timer.start()
        self.deliver(summarise(held, self.window))


def summarise(held: list[Alert], window: float) -> Alert:
    """One alert standing for several of the same kind about the same subject."""
    last = held[-1]
    count = sum(int(a.details.get("count", 1)) for a in held)
    return Alert(kind=last.kind, subject=last.subject,
                 message=f"{len(held)} more {last.kind} alert(s) in the last {window:g}s "
                         f"(total count {count}); latest: {last.message}",
                 details={**last.details, "suppressed": len(held), "count": count,
                          "summary": True})


def webhook(url: str, *, timeout: float = 5.0, headers: dict[str, str] | None = None,
            retries: int = 3) -> AlertSink:
    """A sink that POSTs each alert to ``url`` as JSON (``{"kind", "subject", "message",
    "details"}``) from a background thread, retrying ``retries`` times with a short backoff;
    a delivery that still fails is logged. ``headers`` are added to each request (e.g. an
    ``Authorization`` header)."""
    if not url.startswith(("http://", "https://")):
        from sluice.errors import ConfigError

        raise ConfigError(f"webhook url must start with http:// or https://, got {url!r}")
    pending: queue.Queue[Alert] = queue.Queue(maxsize=1000)

    def post(alert: Alert) -> None:
        body = json.dumps(alert.to_json(), default=str).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "sluice-alerts",
            **(headers or {})})
        for attempt in range(retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    response.read()
                return
            except Exception as exc:
                if attempt == retries:
                    log.warning("alert webhook %s failed for %s alert on %s: %s", url,
                                alert.kind, alert.subject, exc)
                else:
                    time.sleep(0.2 * 2 ** attempt)

    def loop() -> None:
        while True:
            post(pending.get())

    threading.Thread(target=loop, name="sluice-alert-webhook", daemon=True).start()

    def sink(alert: Alert) -> None:
        try:
            pending.put_nowait(alert)
        except queue.Full:
            log.warning("alert webhook %s: queue full, dropping %s alert on %s", url,
                        alert.kind, alert.subject)

    sink.__name__ = f"webhook({url})"
    return sink
