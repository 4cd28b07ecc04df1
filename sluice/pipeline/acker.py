"""Group commit of executed records: one write acknowledges many records.

A record is *in flight* from the moment it starts executing until its completion is durable. A
node holds at most ``concurrency`` records in flight (a semaphore, taken before a record starts
and given back once its completion is durable), so a killed node's work re-runs at most
``concurrency`` records elsewhere. Within that window a chunk's thread does not wait for each
write: while one write is in flight the next batch gathers from all threads, so a busy node
writes large batches and an idle one writes at once.

Two stages overlap. Stage 1 marks a batch done in the business database (``TableSource``); that
is already durable: a chunk taken over later skips rows its fence finds done, so those slots
are freed at once. Stage 2 saves the chunk progress and the run's counters in the store (off
the records' path for such pipelines); records of a pipeline without such a source are durable
only then.

Stage 1 has two writers, each taking at most half the window: while one batch is being
written the next one executes, instead of the whole window waiting for one write. Stage 2 is
one thread; a task's saved progress only grows, since it adds each batch as it comes out of
stage 1, in whatever order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sluice.store import Counts
from sluice.worker.runners import retrying, with_store

if TYPE_CHECKING:
    from sluice.worker.worker import Running, Worker

log = logging.getLogger("sluice.pipeline")
WRITERS = 2  # stage-1 writers: one batch is written while the next executes
SAVE_EVERY = 0.5  # seconds between progress saves of a chunk whose source keeps its state


@dataclass(slots=True)
class _Ack:
    running: Running
    index: int
    record: Any
    slot: bool  # holds a slot of the in-flight window
    complete: bool  # still to be marked done in the pipeline's source


@dataclass(slots=True)
class _Batch:
    acks: list[_Ack]
    slots: int  # slots still held when stage 2 gets the batch
    by_task: dict[int, Running]
    stale: dict[int, int] | None  # completions rejected per task; None: stage 1 gave up


class _Window:
    """The node's in-flight window: a counting semaphore whose waiters may take several
    slots at once. A release wakes one waiter, and each waiter that leaves slots free wakes
    the next: a release of many slots wakes only as many threads as take them."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting = 0
        self._cond = threading.Condition(threading.Lock())

    def acquire(self, upto: int = 1) -> int:
        """Wait for a free slot; take up to ``upto`` of those free. Returns how many."""
        with self._cond:
            while self._free <= 0:
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            n = min(upto, self._free)
            self._free -= n
            if self._free and self._waiting:
                self._cond.notify()
            return n

    def release(self, n: int = 1) -> None:
        with self._cond:
            self._free += n
            if self._waiting:
                self._cond.notify()


class Acker:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        # The stage-1 writer waits on the condition; a chunk thread draining its acks waits on
        # its own event, set when its last one is written (one condition for all would wake
        # every draining thread on every ack).
        self._cond = threading.Condition()
        self._written: dict[int, threading.Event] = {}  # task id -> all its acks written
        self._pending: list[_Ack] = []
        self._inflight: dict[int, int] = defaultdict(int)  # task id -> unacknowledged records
        self._window = _Window(max(1, worker.node.concurrency))
        self._half = max(1, worker.node.concurrency // 2)
        self._stop = False
        self._stage2: queue.Queue[_Batch | None] = queue.Queue()
        for n in range(WRITERS):
            threading.Thread(target=self._complete_loop, name=f"sluice-acker-{n + 1}",
                             daemon=True).start()
        threading.Thread(target=self._checkpoint_loop, name="sluice-acker-store",
                         daemon=True).start()

    def begin(self, upto: int = 1) -> int:
        """Take slots of the node's in-flight window before records start executing: waits
        for one, takes up to ``upto`` if free (a thread running fast records then switches
        less). Returns how many were taken; give back unused ones with :meth:`abandon`."""
        return self._window.acquire(upto)

    def abandon(self, n: int = 1) -> None:
        """Give slots back for records that will not be acknowledged (failed, or not run)."""
        if n > 0:
            self._window.release(n)

    def ack(self, running: Running, index: int, record: Any, slot: bool = True,
            complete: bool = True) -> None:
        """The record is done: write its completion soon. ``slot``: it holds a window slot
        (taken with :meth:`begin`), freed once the completion is durable. ``complete=False``:
        the source already shows it done (finished by a previous owner of the chunk)."""
        self._add(running, [_Ack(running, index, record, slot, complete)])

    def ack_many(self, running: Running, done: list[tuple[int, Any]]) -> None:
        """:meth:`ack` for several records of one task that hold a slot each, (index, record)
        each: one hand-over to the writers, one wake-up."""
        if done:
            self._add(running, [_Ack(running, i, record, True, True) for i, record in done])

    def _add(self, running: Running, acks: list[_Ack]) -> None:
        with self._cond:
            self._pending += acks
            self._inflight[running.task.id] += len(acks)
            written = self._written.get(running.task.id)
            if written is None:
                self._written[running.task.id] = threading.Event()
            else:
                written.clear()
            self._cond.notify()  # only the writer waits on the condition

    def drain(self, running: Running) -> None:
        """Wait until every acknowledgement of this task is written."""
        task_id = running.task.id
        while True:
            with self._cond:
                if self._inflight.get(task_id, 0) <= 0 or self._stop:
                    self._inflight.pop(task_id, None)
                    self._written.pop(task_id, None)
                    return
                written = self._written[task_id]
            written.wait(0.5)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            for written in self._written.values():
                written.set()

    # -- stage 1: the business database ---------------------------------------------------

    def _complete_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop and not self._pending:
                    self._stage2.put(None)
                    return
                acks, self._pending = self._pending[:self._half], self._pending[self._half:]
                if self._pending:
                    self._cond.notify()  # the other writer takes the rest
            slots = sum(a.slot for a in acks)
            try:
                batch = self._complete(acks, slots)
            except Exception:
                log.exception("acknowledging %d record(s) failed", len(acks))
                batch = _Batch(acks, slots, {}, None)
            if batch.stale is None:  # not marked done: their chunks stop and are taken over
                for a in acks:
                    a.running.lost = True
            if slots > batch.slots:
                self._window.release(slots - batch.slots)
            self._stage2.put(batch)

    def _complete(self, acks: list[_Ack], slots: int) -> _Batch:
        by_task: dict[int, Running] = {}
        to_complete: dict[int, list[Any]] = defaultdict(list)
        for a in acks:
            by_task[a.running.task.id] = a.running
            if a.complete:
                to_complete[a.running.task.id].append(a.record)
        stale = retrying(self.w, "mark executed records done",
                         lambda: self._complete_in_sources(by_task, to_complete))
        if stale is None:
            return _Batch(acks, slots, by_task, None)
        # records whose source completion is durable no longer hold their slot
        durable = sum(a.slot for a in acks if self._source(a.running) is not None)
        return _Batch(acks, slots - durable, by_task, stale)

    def _source(self, running: Running) -> Any:
        source = self.w.app.pipelines[running.task.job].source
        return source if source is not None and hasattr(source, "complete_many") else None

    def _complete_in_sources(self, by_task: dict[int, Running],
                             records: dict[int, list[Any]]) -> dict[int, int]:
        """Mark the records done where their source keeps state (TableSource), one call per
        source. Returns the stale completions (fenced off) per task."""
        per_source: dict[int, tuple[Any, list[int]]] = {}
        for task_id, recs in records.items():
            source = self._source(by_task[task_id])
            if source is not None and recs:
                per_source.setdefault(id(source), (source, []))[1].append(task_id)
        stale: dict[int, int] = {}
        for source, task_ids in per_source.values():
            rejected = source.complete_many([
                (by_task[t].task.payload.get("shard"), records[t],
                 by_task[t].extra.get("row_token", by_task[t].task.token))
                for t in task_ids])
            for t, n in zip(task_ids, rejected, strict=True):
                stale[t] = n
        return stale

    # -- stage 2: the store -----------------------------------------------------------------

    def _checkpoint_loop(self) -> None:
        """Save the progress of every batch waiting (one write), then free their slots."""
        writers = WRITERS
        while writers:
            got = [self._stage2.get()]
            while not self._stage2.empty():
                got.append(self._stage2.get())
            writers -= got.count(None)
            batches = [b for b in got if b is not None]
            try:
                self._checkpoint([b for b in batches if b.stale is not None])
            except Exception:
                log.exception("acknowledging %d record(s) failed",
                              sum(len(b.acks) for b in batches))
            finally:
                with self._cond:
                    for a in (a for b in batches for a in b.acks):
                        task_id = a.running.task.id
                        self._inflight[task_id] -= 1
                        if self._inflight[task_id] <= 0 and task_id in self._written:
                            self._written[task_id].set()
                slots = sum(b.slots for b in batches)
                if slots:
                    self._window.release(slots)

    def _checkpoint(self, batches: list[_Batch]) -> None:
        by_task: dict[int, Running] = {}
        for b in batches:
            assert b.stale is not None
            for a in b.acks:
                by_task[a.running.task.id] = a.running
                # only this thread adds to a task's "done": the saved progress only grows
                a.running.extra.setdefault("done", set()).add(a.index)
                _count(a.running, "executed", 1)
            for task_id, n in b.stale.items():
                _count(by_task[task_id], "stale", n)
        # A chunk whose records are done in their source (durable already) saves its progress
        # and counts at most every SAVE_EVERY seconds, and its end saves the rest
        # (unsaved_counts): for fast records that is one write per chunk instead of one per
        # batch. Other chunks save every batch: it is what makes their records durable.
        now = time.monotonic()
        due = {task_id: r for task_id, r in by_task.items()
               if self._source(r) is None or now - r.extra.get("saved_at", 0.0) >= SAVE_EVERY}
        if not due:
            return
        items = [(task_id, r.task.token, {"done": sorted(r.extra["done"])}, r.task.run_id,
                  unsaved_counts(r)) for task_id, r in due.items()]
        stale = with_store(self.w, "checkpoint executed records",
                           lambda: self.w.store.task_checkpoint(items))
        for r in due.values():
            r.extra["saved_at"] = now
        for task_id in list(due) if stale is None else stale:
            due[task_id].lost = True


def _count(running: Running, name: str, n: int) -> None:
    """Add to a task's counts not yet saved in the store."""
    counts = running.extra.setdefault("unsaved", {})
    counts[name] = counts.get(name, 0) + n


def unsaved_counts(running: Running) -> Counts:
    """Take a task's counts not yet saved: they go with the write that saves them."""
    return Counts(**running.extra.pop("unsaved", {}))
