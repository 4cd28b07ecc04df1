"""Declaring a split → load → execute pipeline.

    p = app.pipeline("remind", fixed_rate=5, groups=2, max_attempts=5)

    @p.split              # ctx -> iterable of shard keys (or sluice.Shard(key, zone=...))
    @p.load               # (ctx, shard, limit) -> at most `limit` records (JSON values)
    @p.execute            # (ctx, record) -> None; raise to fail this record's attempt
    @p.execute_batch      # (ctx, records) -> list of None | Exception, one per record

A ready-made source (``sluice.TableSource``) supplies split and load and owns the record state
in the business tables: ``app.pipeline(..., source=TableSource(...))``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sluice.errors import ConfigError
from sluice.job import Backoff, JobSpec, declare, positive_int
from sluice.rate.sizing import classic_limit

if TYPE_CHECKING:
    from sluice.app import App

Fn = Callable[..., Any]


@dataclass(frozen=True)
class Shard:
    """A shard key with an optional zone: nodes started with ``--zone`` only take their zone's."""

    key: str | int
    zone: str | None = None


def shard_number(key: str | int) -> int:
    """The number used for groups: the key itself when numeric ("07" -> 7), else a stable hash."""
    text = str(key)
    if text.isdigit():
        return int(text)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


class Pipeline:
    """A scheduled split → load → execute job. Options beyond the schedule ones of ``App.job``:

    ``groups`` (int or list of names; 2 gives the A/B odd/even split: group A takes odd shard
    numbers, B even ones), ``group_takeover=True`` (a group with no live node has its shards
    taken by the others), ``batch`` (records a loader takes per call; default: adaptive from
    ``max(1, qps × interval / shards)`` with ``qps`` (see ``sluice.rate.sizing``), else 1000),
    ``chunk_size`` (records per dispatched unit; default: 100, and up to 1000 for fast records
    of a pipeline without a rate, see ``sluice.pipeline.runtime.chunk_size``),
    ``max_attempts=5`` per record,
    ``record_backoff=(0.5, 30)`` seconds, ``source`` (e.g. ``TableSource``).

    Rate: ``qps`` (records executed per second over the whole cluster; default None, no
    limit), ``warmup`` (seconds a cold node takes to reach its share, from a third of it;
    default 1, or the interval if shorter; at most the interval), ``rate_mode="local"`` (each
    node holds its share of ``qps``, divided over live membership) or ``"global"`` (every
    permit from one shared bucket in the store).
    """

    def __init__(self, app: App, name: str, *, groups: int | list[str] | None = None,
                 group_takeover: bool = True, batch: int | None = None,
                 chunk_size: int | None = None, max_attempts: int = 5,
                 record_backoff: Any = (0.5, 30.0), source: Any = None,
                 qps: float | None = None, warmup: float | None = None, rate_mode: str = "local",
                 **schedule: Any) -> None:
        where = f"pipeline {name!r}"
        self.app = app
        self.name = name
        self.group_names = _groups(where, groups)
        self.group_takeover = bool(group_takeover)
        self.batch = None if batch is None else positive_int(where, "batch", batch)
        # None: CHUNK records per chunk, more for fast records (runtime.chunk_size)
        self.chunk_size = None if chunk_size is None else positive_int(where, "chunk_size",
                                                                       chunk_size)
        self.max_attempts = positive_int(where, "max_attempts", max_attempts)
        if "routing" in schedule or "shards" in schedule:
            raise ConfigError(f"{where}: routing and shards do not apply to pipelines; "
                              "shards come from @split")
        spec = declare(name, None, kind="pipeline", qps=qps, warmup=warmup, rate_mode=rate_mode,
                       backoff=record_backoff,
                       max_attempts=self.max_attempts,
                       options={"groups": self.group_names, "chunk_size": chunk_size}, **schedule)
        self.spec: JobSpec = spec
        self.record_backoff: Backoff = spec.backoff
        self.source = source
        self.split_fn: Fn | None = getattr(source, "split", None)
        self.load_fn: Fn | None = getattr(source, "load", None)
        self.execute_fn: Fn | None = None
        self.execute_batch_fn: Fn | None = None

    # -- the three layers --------------------------------------------------------------------

    def split(self, fn: Fn) -> Fn:
        self.split_fn = _callable(self.name, "split", fn)
        return fn

    def load(self, fn: Fn) -> Fn:
        self.load_fn = _callable(self.name, "load", fn)
        return fn

    def execute(self, fn: Fn) -> Fn:
        if self.execute_batch_fn is not None:
            raise ConfigError(f"pipeline {self.name!r}: give @execute or @execute_batch, not both")
        self.execute_fn = _callable(self.name, "execute", fn)
        return fn

    def execute_batch(self, fn: Fn) -> Fn:
        if self.execute_fn is not None:
            raise ConfigError(f"pipeline {self.name!r}: give @execute or @execute_batch, not both")
        self.execute_batch_fn = _callable(self.name, "execute_batch", fn)
        return fn

    # -- derived values ----------------------------------------------------------------------

    def group_of(self, key: str | int) -> str | None:
        if not self.group_names:
            return None
        n = len(self.group_names)
        return self.group_names[(shard_number(key) - 1) % n]

    def load_limit(self, shards: int, qps: float | None) -> int:
        """Records per load call to start from: ``batch``, else the classic
        ``max(1, qps × interval / shards)``, else 1000. Loads adapt it (``sluice.rate.sizing``)."""
        if self.batch is not None:
            return self.batch
        if qps:
            return classic_limit(qps, self.interval(), shards)
        return 1000

    def interval(self) -> float:
        return self.spec.interval()

    def check_ready(self) -> None:
        missing = [n for n, f in (("split", self.split_fn), ("load", self.load_fn)) if f is None]
        if self.execute_fn is None and self.execute_batch_fn is None:
            missing.append("execute")
        if missing:
            raise ConfigError(f"pipeline {self.name!r}: no @{', @'.join(missing)} function; "
                              "decorate one (or pass source=)")


def _callable(pipeline: str, layer: str, fn: Any) -> Fn:
    if not callable(fn):
        raise ConfigError(f"pipeline {pipeline!r}: @{layer} must decorate a function")
    return fn  # type: ignore[no-any-return]


def _groups(where: str, groups: Any) -> list[str]:
    if groups is None:
        return []
    if isinstance(groups, int) and not isinstance(groups, bool):
        count = positive_int(where, "groups", groups)
        if count > 26:
            raise ConfigError(f"{where}: groups={count}: name them with a list above 26")
        return [chr(ord("A") + i) for i in range(count)] if count > 1 else []
    if isinstance(groups, list | tuple) and groups and all(isinstance(g, str) for g in groups):
        if len(set(groups)) != len(groups):
            raise ConfigError(f"{where}: group names must be unique, got {groups!r}")
        return list(groups)
    raise ConfigError(f"{where}: groups must be an integer or a list of names, got {groups!r}")
