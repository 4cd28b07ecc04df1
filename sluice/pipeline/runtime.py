"""Running the three pipeline layers as tasks.

split (one per run) → one ``load`` task per shard → ``exec`` chunks of loaded records. A load
task waits while its chunks run and then loads again, until its shard returns no records; so a
shard has at most one batch in flight and records are never loaded twice while being worked.
The run ends when its last task does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sluice.alerts import Alert
from sluice.errors import Cancelled, PipelineError
from sluice.pipeline.acker import Acker, unsaved_counts
from sluice.pipeline.pipeline import Pipeline, Shard
from sluice.pipeline.tablesource import TableSource
from sluice.rate.sizing import load_size
from sluice.store import Counts, Store, TaskPlan
from sluice.store.rows import dumps
from sluice.worker.handlers import call
from sluice.worker.runners import record_failure, retrying, runner, with_store

if TYPE_CHECKING:
    from sluice.worker.worker import Running, Worker

log = logging.getLogger("sluice.pipeline")
LAYER_ATTEMPTS = 3  # split and load calls that raise are retried this often before the run fails
_acker_lock = threading.Lock()
# A chunk whose records take under FAST_RECORD seconds takes window slots SLOT_GROUP at a time:
# one thread then runs several records per wake-up. Slow records take one slot each, so that
# every thread of the node can be waiting on a record of its own.
FAST_RECORD = 0.0005
SLOT_GROUP = 32
CHUNK, FAST_CHUNK = 100, 1000  # records per execute chunk by default (see chunk_size)


def acker(w: Worker) -> Acker:
    found = w.plugins.get("acker")  # made once; looked up per slot group, without the lock
    if found is not None:
        return found  # type: ignore[no-any-return]
    with _acker_lock:
        if "acker" not in w.plugins:
            w.plugins["acker"] = Acker(w)
        return w.plugins["acker"]  # type: ignore[no-any-return]


def _layer_error(w: Worker, r: Running, pipe: Pipeline, layer: str, exc: BaseException,
                 contract: bool) -> None:
    """A layer failed: a broken contract fails the run at once; an exception is retried."""
    error = f"pipeline {pipe.name!r}, {layer}: {exc}" if contract else \
        f"pipeline {pipe.name!r}, {layer} raised {type(exc).__name__}: {exc}"
    if contract:
        out = with_store(w, "record layer error",
                         lambda: w.store.task_fail(r.task.id, r.task.token, error, 0, final=True))
        if out is not None and out.dead:
            w.app.alert(Alert(kind="run_failed", subject=pipe.name, message=error,
                              details={"run_id": r.task.run_id, "layer": layer}))
        return
    record_failure(w, r, error, pipe.record_backoff.delay(r.task.attempt))


@runner("split")
def run_split(w: Worker, r: Running) -> None:
    pipe = w.app.pipelines[r.task.job]
    try:
        pipe.check_ready()
        assert pipe.split_fn is not None
        result = call(pipe.split_fn, r.ctx, (), w.loops, None)
        shards = _shards(result)
    except PipelineError as exc:
        return _layer_error(w, r, pipe, "split", exc, contract=True)
    except Exception as exc:
        return _layer_error(w, r, pipe, "split", exc, contract=False)
    limit = pipe.load_limit(len(shards), _qps(w, pipe))
    loads = [TaskPlan(kind="load", grp=pipe.group_of(s.key), zone=s.zone,
                      payload={"shard": s.key, "limit": limit, "zone": s.zone,
                               "nshards": len(shards)},
                      max_attempts=LAYER_ATTEMPTS)
             for s in shards]
    with_store(w, "create load tasks", lambda: w.store.task_spawn(
        r.task.id, r.task.token, loads, Counts(shards=len(shards)), wait=False, complete=True))
    log.info("%s run %s: split into %d shard(s), %d record(s) per load", pipe.name,
             r.task.run_id, len(shards), limit)


def _shards(result: Any) -> list[Shard]:
    if isinstance(result, str | bytes | dict) or not isinstance(result, Iterable):
        raise PipelineError(f"split must return an iterable of shard keys, got "
                            f"{type(result).__name__}; return e.g. a list of strings")
    shards = [s if isinstance(s, Shard) else Shard(s) for s in result]
    for s in shards:
        if not isinstance(s.key, str | int) or isinstance(s.key, bool):
            raise PipelineError(f"split returned shard key {s.key!r}; keys must be str or int")
    keys = [str(s.key) for s in shards]
    if len(set(keys)) != len(keys):
        raise PipelineError("split returned the same shard key twice; keys must be unique")
    return shards


def _qps(w: Worker, pipe: Pipeline) -> float | None:
    """The pipeline's cluster rate: a ``sluice set`` override, else its declared ``qps``."""
    return w.overrides.get(pipe.name, {}).get("qps", pipe.spec.qps)  # type: ignore[no-any-return]


def _load_size(w: Worker, r: Running, pipe: Pipeline) -> int | None:
    """Records to load now, adapted to the backlog (``sluice.rate.sizing``); None when the
    task was handed back to look again later (enough is loaded already)."""
    qps = _qps(w, pipe)
    if pipe.batch is not None or not qps:
        return int(r.task.payload["limit"])
    counted = with_store(w, "read the backlog", lambda: w.store.rate_backlog(pipe.name))
    if counted is None:  # the store is away: the classic size, as computed at split
        return int(r.task.payload["limit"])
    size = load_size(qps, pipe.interval(), int(r.task.payload.get("nshards") or 1), *counted)
    gate = w.plugins.get("rate")
    if size.limit == 0:
        with_store(w, "defer load", lambda: w.store.task_release(r.task.id, r.task.token,
                                                                  size.defer))
        w.wake_in(size.defer)
        return None
    if gate is not None and pipe.name in gate.jobs:
        gate.jobs[pipe.name].loader = size.limit
    return size.limit


@runner("load")
def run_load(w: Worker, r: Running) -> None:
    pipe = w.app.pipelines[r.task.job]
    shard = r.task.payload["shard"]
    limit = _load_size(w, r, pipe)
    if limit is None:
        return
    r.ctx.cursor = (r.task.progress or {}).get("cursor")  # where the last load left off
    try:
        assert pipe.load_fn is not None
        checked = isinstance(pipe.source, TableSource) and \
            getattr(pipe.load_fn, "__self__", None) is pipe.source
        records = _records(call(pipe.load_fn, r.ctx, (shard, limit), w.loops, None), limit,
                           encodable=checked)
        cursor = {"cursor": _cursor(r.ctx.cursor)}
    except PipelineError as exc:
        return _layer_error(w, r, pipe, f"load of shard {shard!r}", exc, contract=True)
    except Exception as exc:
        return _layer_error(w, r, pipe, f"load of shard {shard!r}", exc, contract=False)
    records = _without_parked(w, r, shard, records)
    if not records:
        out = with_store(w, "end load", lambda: w.store.task_complete(r.task.id, r.task.token))
        if out is not None and out.run_finished:
            _run_summary(w, r.task.run_id, pipe.name, out.run_finished)
        return
    grp, zone = r.task.grp, r.task.payload.get("zone")
    size = chunk_size(w, pipe, len(records), int(r.task.payload.get("nshards") or 1))
    # row_token: the fencing token the loader stamped on the rows (a TableSource claims them
    # with its own); a chunk's first holder completes them with it, without fencing again
    loaded = {"row_token": r.task.token, "loaded_at": time.time() + w.offset}
    chunks = [TaskPlan(kind="exec", grp=grp, zone=zone, parent_id=r.task.id,
                       payload={"shard": shard, "records": records[i:i + size],
                                "attempts": [0] * len(records[i:i + size]), **loaded},
                       max_attempts=1_000_000)
              for i in range(0, len(records), size)]
    with_store(w, "dispatch loaded records", lambda: w.store.task_spawn(
        r.task.id, r.task.token, chunks, Counts(loaded=len(records)), wait=True,
        progress=cursor))


def chunk_size(w: Worker, pipe: Pipeline, loaded: int, shards: int = 1) -> int:
    """Records per execute chunk of a batch of ``loaded`` records, one of ``shards`` batches
    loaded at once: the pipeline's ``chunk_size`` if it gives one. Otherwise CHUNK, or more
    while this node's recent records of the pipeline ran under FAST_RECORD each and no rate
    applies: each live node's share of what the shards load at once, up to FAST_CHUNK (one
    shard's batch is cut for all nodes; many shards give every node whole batches). A chunk's
    own costs (its row, its claim, its end: about 4 ms of machine CPU in the pipeline bench)
    are then paid once per many records, where they had cost more than the records. Slow
    records keep small chunks, so that many threads work on them at once; under a rate, small
    chunks let every node take its share."""
    if pipe.chunk_size is not None:
        return pipe.chunk_size
    pace = w.stats.pace(pipe.name)
    if pace is None or pace >= FAST_RECORD or _qps(w, pipe):
        return CHUNK
    per_node = -(-loaded * max(1, shards) // max(1, len(w.members)))
    return max(CHUNK, min(FAST_CHUNK, per_node, loaded))


def _without_parked(w: Worker, r: Running, shard: Any, records: list[Any]) -> list[Any]:
    """Drop records parked earlier in this run: a loader that still returns them (they are
    still pending in its table) would otherwise load them forever. Such a shard ends when only
    parked records are left."""
    if not records:
        return records
    parked = w.store.dead_of_run(r.task.run_id, str(shard))
    if not parked:
        return records
    return [rec for rec in records if dumps(rec) not in parked]


def _cursor(value: Any) -> Any:
    """A load's ``ctx.cursor``, kept with the load task for its next turn: JSON only."""
    try:
        dumps(value)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"load set ctx.cursor to a value that is not JSON-serialisable "
                            f"({exc}); use str/int/float/bool/None, lists or dicts") from None
    return value


def _records(result: Any, limit: int, encodable: bool = False) -> list[Any]:
    """Check what a load returned. ``encodable``: made JSON-ready by the pipeline's own
    source (``TableSource``), so it is not encoded once more just to check that."""
    if result is None:
        return []
    if isinstance(result, str | bytes | dict) or not isinstance(result, Iterable):
        raise PipelineError(f"load must return a list of records, got {type(result).__name__}")
    records = list(result)
    if len(records) > limit:
        raise PipelineError(f"load returned {len(records)} records for limit {limit}; return "
                            "at most `limit` (slice your query with LIMIT)")
    try:
        if not encodable:
            dumps(records)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"load returned a record that is not JSON-serialisable ({exc}); "
                            "return dicts of str/int/float/bool/None/lists") from None
    return records


@runner("exec")
def run_exec(w: Worker, r: Running) -> None:
    pipe = w.app.pipelines[r.task.job]
    payload = r.task.payload
    records, attempts = payload["records"], payload["attempts"]
    progress = r.task.progress or {}
    done = set(progress.get("done", []))
    todo = [i for i in range(len(records)) if i not in done]
    r.extra["done"] = done
    r.extra["saved_at"] = time.monotonic()  # its progress as claimed is saved (acker.SAVE_EVERY)
    r.extra["row_token"] = payload.get("row_token", r.task.token)
    source = pipe.source
    if source is not None and hasattr(source, "fence"):  # rows that carry a fencing token
        if todo and _must_fence(w, r, source):
            r.extra["row_token"] = r.task.token
            try:
                held = retrying(w, "fence rows", lambda: (source.fence(
                    payload.get("shard"), [records[i] for i in todo], r.task.token,
                    w.node.id),))
            except PipelineError as exc:
                return _layer_error(w, r, pipe, "execute (fencing rows)", exc, contract=True)
            if held is None:
                return  # the business database stayed away: the lease lapses, the chunk moves
            todo = _skip_finished(w, r, records, todo, held[0], source)
        r.ctx.fencing_token = r.extra["row_token"]  # the token the records' rows carry
    failures = _execute_all(w, r, pipe, records, attempts, todo)
    acker(w).drain(r)
    if r.lost:
        return
    _finish_chunk(w, r, pipe, failures)


def _must_fence(w: Worker, r: Running, source: Any) -> bool:
    """A chunk fences its rows (stamps them with its own token) unless it is their loader's
    direct heir: the first holder of a chunk whose rows still carry the loader's token and
    lease. Anyone later (a takeover, a hand-back, a retry of parked rows) must fence, so that
    the earlier holder's completions are rejected and rows it finished are not run again."""
    payload = r.task.payload
    if r.task.claims > 1 or "row_token" not in payload:
        return True
    age = time.time() + w.offset - float(payload.get("loaded_at") or 0)
    return age > float(getattr(source, "lease", 0)) / 2  # renew the rows' lease first


def _skip_finished(w: Worker, r: Running, records: list[Any], todo: list[int], held: set[Any],
                   source: Any) -> list[int]:
    """Records the fence did not get were finished in the source by an earlier owner of this
    chunk whose store checkpoint was lost with it: acknowledge them without running them."""
    ack = acker(w)
    runnable = []
    for i in todo:
        if source.key_of(records[i]) in held:
            runnable.append(i)
        else:
            ack.ack(r, i, records[i], slot=False, complete=False)
    return runnable


def _execute_all(w: Worker, r: Running, pipe: Pipeline, records: list[Any],
                 attempts: list[int], todo: list[int]) -> dict[int, str]:
    if pipe.execute_batch_fn is not None:
        return _execute_batch(w, r, pipe, records, todo)
    ack = acker(w)
    failures: dict[int, str] = {}
    pos, fast = 0, False
    while pos < len(todo) and not r.lost:
        # slots of the node's in-flight window: bound re-runs on a kill
        slots = ack.begin(min(SLOT_GROUP, len(todo) - pos) if fast else 1)
        group = todo[pos:pos + slots]
        pos += slots
        fast = _execute_group(w, r, pipe, records, attempts, group, failures)
    return failures


def _execute_group(w: Worker, r: Running, pipe: Pipeline, records: list[Any],
                   attempts: list[int], group: list[int], failures: dict[int, str]) -> bool:
    """Run records that hold a window slot each. Fast records without a rate are handed to
    the acker together, once the group is through: one hand-over and one wake-up instead of
    one per record. Returns whether the last one was fast."""
    assert pipe.execute_fn is not None
    ack = acker(w)
    gate = w.plugins.get("rate")
    paced = gate is not None and gate.paced(pipe.name)
    ctx = r.ctx
    done: list[tuple[int, Any]] = []
    runs: list[tuple[float, bool]] = []
    fast = False
    try:
        for i in group:
            if r.lost:
                break
            if paced and gate is not None:
                gate.acquire(pipe.name)  # the pipeline's qps share on this node (sluice.rate)
            ctx.attempt = attempts[i] + 1
            started = time.perf_counter()
            try:
                call(pipe.execute_fn, ctx, (records[i],), w.loops, pipe.spec.timeout)
            except Cancelled:
                failures[i] = "Cancelled"
            except Exception as exc:  # a record's failure is its own attempt, not the worker's
                failures[i] = f"{type(exc).__name__}: {exc}"
            took = time.perf_counter() - started
            fast = took < FAST_RECORD
            runs.append((took, i not in failures))
            if i not in failures:
                done.append((i, records[i]))
            if paced or not fast:  # a slow record's completion is not kept waiting
                ack.ack_many(r, done)
                done = []
    finally:
        ack.ack_many(r, done)
        ack.abandon(len(group) - len(runs) + sum(not ok for _, ok in runs))  # no ack coming
        if gate is not None and not paced:
            gate.acquire(pipe.name, len(runs))  # counted as started; no rate, no wait
        w.stats.executed(pipe.name, runs)
    return fast


def _execute_batch(w: Worker, r: Running, pipe: Pipeline, records: list[Any],
                   todo: list[int]) -> dict[int, str]:
    ack = acker(w)
    batch = [records[i] for i in todo]
    failures: dict[int, str] = {}
    gate = w.plugins.get("rate")
    if gate is not None and batch:
        gate.acquire(pipe.name, len(batch))  # pay-later: the next caller waits for these
    started = time.perf_counter()
    try:
        assert pipe.execute_batch_fn is not None
        outcomes = call(pipe.execute_batch_fn, r.ctx, (batch,), w.loops, pipe.spec.timeout)
        outcomes = list(outcomes) if outcomes is not None else [None] * len(batch)
        if len(outcomes) != len(batch):
            raise PipelineError(f"execute_batch returned {len(outcomes)} outcomes for "
                                f"{len(batch)} records; return one per record")
    except Exception as exc:
        outcomes = [exc] * len(batch)
    each = (time.perf_counter() - started) / max(1, len(batch))
    w.stats.executed(pipe.name, [(each, not isinstance(outcome, BaseException))
                                 for outcome in outcomes])
    for i, outcome in zip(todo, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failures[i] = f"{type(outcome).__name__}: {outcome}"
        else:
            ack.ack(r, i, records[i], slot=False)  # a batch is in flight as a whole
    return failures


def _finish_chunk(w: Worker, r: Running, pipe: Pipeline, failures: dict[int, str]) -> None:
    payload = r.task.payload
    records, attempts = payload["records"], payload["attempts"]
    retry_records, retry_attempts, parked = [], [], []
    for i, error in failures.items():
        if attempts[i] + 1 >= pipe.max_attempts:
            parked.append((records[i], error, attempts[i] + 1))
        else:
            retry_records.append(records[i])
            retry_attempts.append(attempts[i] + 1)
    retry = None
    if retry_records:
        delay = pipe.record_backoff.delay(min(retry_attempts))
        retry = TaskPlan(kind="exec", grp=r.task.grp, zone=payload.get("zone"),
                         parent_id=r.task.parent_id, delay=delay, max_attempts=1_000_000,
                         payload={**payload, "records": retry_records,
                                  "attempts": retry_attempts, "row_token": r.extra["row_token"]})
    if parked and pipe.source is not None and hasattr(pipe.source, "park"):
        pipe.source.park(payload.get("shard"), [p[0] for p in parked], r.extra["row_token"])
    # records re-run after a takeover are counted by the reaper (Store.task_reap); records
    # executed since the last progress save are counted here (acker.SAVE_EVERY)
    unsaved = unsaved_counts(r)
    counts = Counts(failed=len(failures), parked=len(parked), executed=unsaved.executed,
                    stale=unsaved.stale)
    out = with_store(w, "finish chunk", lambda: w.store.task_finish_chunk(
        r.task.id, r.task.token, counts, retry, parked, str(payload.get("shard")),
        parent_id=r.task.parent_id, wake=bool(_qps(w, pipe))))
    if out is None or out.stale:
        return
    if retry is not None:
        w.wake_in(retry.delay)  # no wake-up announces when the retry falls due
    if parked:
        w.stats.parked(pipe.name, len(parked))
        w.app.alert(Alert(kind="record_parked", subject=pipe.name,
                          message=f"{len(parked)} record(s) parked after {pipe.max_attempts} "
                                  f"attempts: {parked[0][1]}",
                          details={"run_id": r.task.run_id, "count": len(parked),
                                   "shard": payload.get("shard")}))
    if failures or r.task.attempt > 1:
        log.info("%s run %s shard %s: chunk of %d done (attempt %d), %d failed, %d parked",
                 pipe.name, r.task.run_id, payload.get("shard"), len(records), r.task.attempt,
                 len(failures), len(parked))
    if out.run_finished:
        _run_summary(w, r.task.run_id, pipe.name, out.run_finished)


def _run_summary(w: Worker, run_id: int, name: str, state: str) -> None:
    run = w.store.run_get(run_id)
    if run is None:
        return
    took = (run["finished_at"] or 0) - (run["started_at"] or 0)
    log.info("%s run %s %s in %.1fs: %d shard(s), %d loaded, %d executed, %d failed, %d parked, "
             "%d re-run after reclaim, %d stale completions rejected", name, run_id, state, took,
             run["shards"], run["loaded"], run["executed"], run["failed"], run["parked"],
             run["reexecuted"], run["stale"])


def retry_dead(store: Store, job: str, ids: list[int] | None) -> tuple[int | None, int]:
    """Send parked records back for execution in a new run (``sluice dead retry``)."""
    rows = store.dead_take(job, ids)
    if not rows:
        return None, 0
    by_shard: dict[str, list[Any]] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], []).append(row["record"])
    tasks = [TaskPlan(kind="exec", max_attempts=1_000_000,
                      payload={"shard": shard, "records": recs, "attempts": [0] * len(recs)})
             for shard, recs in by_shard.items()]
    return store.run_create(job, "retry", tasks), len(rows)

