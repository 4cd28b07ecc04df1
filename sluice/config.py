"""Worker settings: one typed structure, each field with its default, env variable and check.

Precedence: an explicit argument (or CLI flag) wins over ``SLUICE_<FIELD>`` in the environment,
which wins over the default. A bad value fails at start with a message naming it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from sluice.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///sluice.db"


@dataclass(frozen=True, kw_only=True)
class Settings:
    #: where nodes coordinate (SLUICE_DATABASE_URL)
    database_url: str = DEFAULT_DATABASE_URL
    #: seconds between a node's heartbeats; leases are renewed and membership re-read on each
    heartbeat: float = 1.0
    #: a node whose last heartbeat is older than this many seconds is no longer live
    node_ttl: float = 5.0
    #: seconds a claim lasts without renewal; work of a killed node is retried after this
    lease_ttl: float = 10.0
    #: seconds between store polls when no wake-up arrives (SQLite has no LISTEN/NOTIFY)
    poll_interval: float = 0.0  # 0 = per database: 0.1 s on SQLite, 1 s on PostgreSQL
    #: seconds a stopping node waits for running work before handing it back
    drain_timeout: float = 30.0
    #: handler threads per worker process
    concurrency: int = 8
    #: this node's weight in dividing a job's ``qps`` among live nodes (default: concurrency)
    weight: float | None = None
    #: node group (pipelines with groups=) and zone
    group: str | None = None
    zone: str | None = None
    #: seconds in which repeated alerts of one kind about one subject are summed up in one
    alert_window: float = 60.0
    #: a job whose firing is overdue by more than this many seconds raises ``firing_late``
    late_after: float = 30.0
    #: a pipeline below ``rate_tolerance`` of its target rate for this long raises
    #: ``rate_unreachable``
    rate_alert_after: float = 60.0
    #: the fraction of the target rate counted as reaching it
    rate_tolerance: float = 0.8
    #: serve Prometheus metrics of this worker on this port (0: off); with --processes N,
    #: worker i listens on port + i
    metrics_port: int = 0

    @classmethod
    def load(cls, **given: Any) -> Settings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            env = os.environ.get(f"SLUICE_{f.name.upper()}")
            if given.get(f.name) is not None:
                values[f.name] = given[f.name]
            elif env not in (None, ""):
                values[f.name] = _parse(f.name, env, f.type)
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(f.name for f in fields(cls))}")
        return cls(**values).checked()

    def checked(self) -> Settings:
        scheme = self.database_url.split("://", 1)[0].split("+")[0] if "://" in \
            self.database_url else ""
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ConfigError(f"database url {self.database_url!r}: unsupported scheme "
                              f"{scheme or '(none)'!r}; use sqlite:///FILE or postgresql://…")
        for name in ("heartbeat", "node_ttl", "lease_ttl", "drain_timeout", "alert_window",
                     "late_after", "rate_alert_after", "rate_tolerance"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"setting {name} (SLUICE_{name.upper()}) must be a number > 0, "
                                  f"got {value!r}")
        if self.node_ttl < 2 * self.heartbeat:
            raise ConfigError(f"setting node_ttl ({self.node_ttl}) must be at least twice "
                              f"heartbeat ({self.heartbeat}) or live nodes will flap")
        if self.lease_ttl < 2 * self.heartbeat:
            raise ConfigError(f"setting lease_ttl ({self.lease_ttl}) must be at least twice "
                              f"heartbeat ({self.heartbeat}): leases are renewed every heartbeat")
        if self.weight is not None and (not isinstance(self.weight, int | float) or
                                        not math.isfinite(self.weight) or self.weight <= 0):
            raise ConfigError(f"setting weight (SLUICE_WEIGHT) must be a number > 0, "
                              f"got {self.weight!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError(f"setting concurrency must be an integer >= 1, "
                              f"got {self.concurrency!r}")
        if self.rate_tolerance > 1:
            raise ConfigError(f"setting rate_tolerance must be in (0, 1], "
                              f"got {self.rate_tolerance!r}")
        port = self.metrics_port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"setting metrics_port (SLUICE_METRICS_PORT) must be a port "
                              f"number 0-65535 (0: off), got {port!r}")
        return self

    def poll(self) -> float:
        if self.poll_interval > 0:
            return self.poll_interval
        return 0.1 if self.database_url.startswith("sqlite") else 1.0

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None}).checked()


def _parse(name: str, raw: str, typ: Any) -> Any:
    kind = str(typ)
    try:
        if "float" in kind:
            return float(raw)
        if "int" in kind:
            return int(raw)
    except ValueError:
        raise ConfigError(f"SLUICE_{name.upper()}={raw!r} is not a number") from None
    return raw
