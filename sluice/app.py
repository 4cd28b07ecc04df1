"""``App``: the registry of jobs and pipelines, plus the store they coordinate through."""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sluice.alerts import Alert, AlertGate, AlertSink, dispatch
from sluice.config import Settings
from sluice.errors import ConfigError, UnknownJobError
from sluice.job import JobSpec, check_options, declare
from sluice.locks import Lease, acquire
from sluice.schedule.triggers import FixedRate, Schedule, build, from_spec
from sluice.store import Store

if TYPE_CHECKING:
    from sluice.pipeline.pipeline import Pipeline

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("sluice")

SETTABLE = ("cron", "fixed_rate", "fixed_delay", "timezone", "qps")
JOB_OPTIONS = [p for p in inspect.signature(declare).parameters if p not in ("name", "func",
                                                                               "kind", "options")]


class App:
    """The jobs of one application and the store they coordinate through.

    ``App()`` uses ``SLUICE_DATABASE_URL``, else ``sqlite:///sluice.db``;
    ``App("postgresql://…")`` for a cluster. Other keyword arguments are worker settings
    (see ``sluice.config.Settings``). Raises ``ConfigError`` for a bad setting.
    """

    def __init__(self, database_url: str | None = None, **settings: Any) -> None:
        self.settings = Settings.load(database_url=database_url, **settings)
        self.jobs: dict[str, JobSpec] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.outboxes: list[Any] = []
        self._sinks: list[AlertSink] = []
        self._gate = AlertGate(lambda a: dispatch(self._sinks, a), self.settings.alert_window)
        self._store: Store | None = None
        self._store_lock = threading.Lock()

    # -- declaring ------------------------------------------------------------------------

    def job(self, func: F | None = None, *, name: str | None = None, **options: Any) -> Any:
        """Declare a scheduled job (sync or async ``fn(ctx)``).

        Options: one of ``cron=`` (6-field with seconds, or 5-field), ``fixed_rate=``,
        ``fixed_delay=`` (seconds or timedelta), with ``initial_delay=`` and ``timezone=``
        (cron only); none means the job only runs when triggered. ``routing=`` "single"
        (default), "broadcast" or "sharded" (with ``shards=N`` or a list); ``overlap=`` "skip"
        (default), "queue", "concurrent", "replace"; ``misfire=`` "fire_once" (default),
        "skip", "catch_up" (``catch_up_limit=10``), ``misfire_grace=5`` seconds;
        ``max_attempts=1``, ``backoff=(1, 300)``, ``timeout=None``.
        Raises ``ConfigError`` naming the job and the field.
        """

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigError(f"@app.job must decorate a function, got {fn!r}")
            job_name = name or fn.__name__
            check_options(f"job {job_name!r}", options, JOB_OPTIONS)
            self._add(declare(job_name, fn, **options))
            return fn

        return register(func) if func is not None else register

    def pipeline(self, name: str, **options: Any) -> Pipeline:
        """Declare a split → load → execute pipeline; see ``sluice.pipeline.Pipeline``."""
        from sluice.pipeline.pipeline import Pipeline

        pipe = Pipeline(self, name, **options)
        self._add(pipe.spec)
        self.pipelines[name] = pipe
        return pipe

    def _add(self, spec: JobSpec) -> None:
        if spec.name in self.jobs:
            raise ConfigError(f"job {spec.name!r} is declared twice; job names must be unique")
        self.jobs[spec.name] = spec

    def on_alert(self, sink: AlertSink) -> AlertSink:
        """Register an alert sink (``fn(alert)``); usable as a decorator. Built-in sinks:
        ``sluice.alerts.log_sink`` (the default when none is registered) and
        ``sluice.alerts.webhook(url)``. Repeats of one kind about one subject within
        ``alert_window`` seconds (default 60) reach the sinks as one summary alert."""
        self._sinks.append(sink)
        return sink

    def alert(self, alert: Alert) -> None:
        self._gate.offer(alert)

    def flush_alerts(self) -> None:
        """Send the summaries of held repeated alerts now (a stopping worker does)."""
        self._gate.flush()

    def add_outbox_relay(self, outbox: Any, *, every: float = 1.0, batch: int = 500) -> JobSpec:
        """Register the outbox's relay (the compensation job): every node sends pending
        messages every ``every`` seconds, ``batch`` at a time, and again at once while more
        are waiting. Parked-message alerts go to this app's alert sinks."""
        def relay(ctx: Any) -> None:
            while outbox.relay(batch=batch, owner=ctx.node.id).more and not ctx.cancelled:
                pass

        outbox.alert_sinks.append(self.alert)
        spec = declare(f"outbox_relay:{outbox.table}", relay, fixed_delay=every,
                       routing="broadcast", overlap="skip")
        self._add(spec)
        self.outboxes.append(outbox)
        return spec

    # -- groups (pipelines) ------------------------------------------------------------------

    def group_names(self) -> list[str]:
        names: list[str] = []
        for p in self.pipelines.values():
            names.extend(g for g in p.group_names if g not in names)
        return names

    def group_takeover(self, group: str) -> bool:
        return any(p.group_takeover and group in p.group_names for p in self.pipelines.values())

    # -- the store and operations ------------------------------------------------------------

    def open_store(self, pool_size: int = 4) -> Store:
        """A new connection to the store (migrated to the current schema)."""
        return Store.open(self.settings.database_url, pool_size=pool_size)

    @property
    def store(self) -> Store:
        with self._store_lock:
            if self._store is None:
                self._store = self.open_store()
            return self._store

    def lock(self, name: str, *, ttl: float = 30.0, wait: float | None = 30.0,
             auto_renew: bool = True) -> Lease:
        """Acquire the distributed lock ``name``; waits up to ``wait`` seconds (None: forever),
        then raises ``LockNotAcquired``. The lease's ``token`` is its fencing token."""
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        return acquire(self.store, name, owner, ttl=ttl, wait=wait, auto_renew=auto_renew)

    def _known(self, name: str) -> dict[str, Any]:
        row = self.store.job_get(name)
        if row is None:
            known = ", ".join(sorted(j["name"] for j in self.store.job_list())) or "none yet"
            raise UnknownJobError(f"unknown job {name!r}; known jobs: {known}")
        return row

    def trigger(self, name: str) -> int:
        """Start a run of ``name`` now, whatever its schedule; returns the run id."""
        self._known(name)
        run_id = self.store.run_trigger(name)
        assert run_id is not None
        return run_id

    def pause(self, name: str) -> None:
        self._known(name)
        self.store.job_set_paused(name, True)

    def resume(self, name: str) -> None:
        self._known(name)
        resume_job(self.store, name)

    def set(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change a job's schedule or rate at run time (``sluice set``); every node picks it up
        within a heartbeat. Returns the job's overrides after the change."""
        return set_job(self.store, name, changes)

    def run_worker(self, **settings: Any) -> None:
        """Run a worker in this process until SIGTERM/SIGINT (see ``sluice worker``)."""
        from sluice.worker.process import run_foreground

        run_foreground(self, self.settings.with_(**settings))


SCHEDULE_KEYS = ("cron", "fixed_rate", "fixed_delay", "timezone", "initial_delay")


def stored_schedule(row: dict[str, Any]) -> Schedule | None:
    """A stored job's schedule, with ``sluice set`` changes applied."""
    overrides = {k: v for k, v in row["overrides"].items() if k in SCHEDULE_KEYS}
    if any(k in overrides for k in ("cron", "fixed_rate", "fixed_delay")):
        return from_spec(f"job {row['name']!r}", overrides)
    return from_spec(f"job {row['name']!r}", row["spec"].get("schedule") or {})


def resume_job(store: Store, name: str) -> None:
    """Resume from now: the instants that passed while paused are not fired."""
    row = store.job_get(name)
    if row is None:
        raise UnknownJobError(f"unknown job {name!r}")
    schedule, now, nxt = stored_schedule(row), store.clock(), row["next_fire_at"]
    if schedule is not None and nxt is not None and nxt < now:
        if isinstance(schedule, FixedRate):  # keep the phase: the first instant from now on
            steps = -(-(now - nxt) // schedule.every)
            nxt = nxt + steps * schedule.every
        else:
            nxt = schedule.next_after(now) if schedule.finish_delay is None else now
    store.job_set_paused(name, False, nxt)


def set_job(store: Store, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    row = store.job_get(name)
    if row is None:
        raise UnknownJobError(f"unknown job {name!r}")
    bad = sorted(set(changes) - set(SETTABLE))
    if bad:
        raise ConfigError(f"sluice set {name}: cannot set {', '.join(bad)}; settable fields: "
                          f"{', '.join(SETTABLE)}")
    overrides = dict(row["overrides"])
    if "qps" in changes:
        from sluice.job import positive_number

        if row["kind"] != "pipeline" and row["spec"].get("routing") not in ("sharded",
                                                                              "broadcast"):
            raise ConfigError(f"sluice set {name}: qps applies to pipelines and to jobs with "
                              "routing='sharded' or 'broadcast'; this job runs on one node")
        overrides["qps"] = positive_number(f"job {name!r}", "qps", _number(changes["qps"]))
    kinds = [k for k in ("cron", "fixed_rate", "fixed_delay") if k in changes]
    if not kinds and "timezone" not in changes:
        store.job_set_overrides(name, overrides)
        return overrides
    spec = {k: v for k, v in (row["spec"].get("schedule") or {}).items() if k != "initial_delay"}
    if kinds:
        spec = {k: v for k, v in spec.items() if k not in ("cron", "fixed_rate", "fixed_delay")}
        if kinds[0] != "cron":
            spec.pop("timezone", None)
    for key in ("cron", "fixed_rate", "fixed_delay", "timezone"):
        if key in changes:
            spec[key] = changes[key] if key in ("cron", "timezone") else _number(changes[key])
    schedule = build(f"job {name!r}", **spec)
    if schedule is None:
        raise ConfigError(f"sluice set {name}: give cron=, fixed_rate= or fixed_delay=")
    overrides.update({k: v for k, v in spec.items()})
    for key in ("cron", "fixed_rate", "fixed_delay", "timezone"):
        if key not in spec:
            overrides.pop(key, None)
    store.job_set_schedule(name, overrides, schedule.first(store.clock()), schedule.finish_delay)
    return overrides


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
