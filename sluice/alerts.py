"""Alerts: what sluice tells an operator about, and the hook that receives them.

``app.on_alert(fn)`` registers a sink; with none registered, one log line is written per alert.
A sink that raises is logged and ignored: an alert must never stop a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("sluice.alerts")


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One alert. ``kind`` is a stable word: ``run_failed``, ``record_parked``, ``message_parked``,
    ``firing_missed``, ``node_lost``, ``rate_unreachable``."""

    kind: str
    subject: str  # the job, pipeline or outbox table it is about
    message: str  # one human line
    details: dict[str, Any] = field(default_factory=dict)


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
