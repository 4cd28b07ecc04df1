"""Group commit of executed records: one store write acknowledges many records.

A record is *in flight* from the moment it starts executing until its completion is durably
written. A node holds at most ``concurrency`` records in flight (a semaphore, taken before a
record starts and given back when its acknowledgement is written), so a killed node's work
re-runs at most ``concurrency`` records elsewhere. Within that window a chunk's thread does not
wait for each write: while one write is in flight the next batch gathers from all threads, so a
busy node writes large batches and an idle one writes at once. Two stages overlap: one thread
marks a batch done in the business database while another saves the previous batch's progress
in the store.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sluice.store import Counts
from sluice.worker.runners import retrying, with_store

if TYPE_CHECKING:
    from sluice.worker.worker import Running, Worker

log = logging.getLogger("sluice.pipeline")
_Step = tuple[dict[int, "Running"], list[tuple[int, int, Any, int, Counts]]]


class Acker:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self._cond = threading.Condition()
        self._pending: list[tuple[Running, int, Any]] = []
        self._slots_pending = 0  # how many of the pending records hold a window slot
        self._inflight: dict[int, int] = defaultdict(int)  # task id -> unacknowledged records
        self._window = threading.BoundedSemaphore(max(1, worker.node.concurrency))
        self._stop = False
        self._stage2: queue.Queue[tuple[list[Any], int, _Step | None] | None] = queue.Queue(2)
        self._thread = threading.Thread(target=self._loop, name="sluice-acker", daemon=True)
        self._thread.start()
        threading.Thread(target=self._checkpoint_loop, name="sluice-acker-store",
                         daemon=True).start()

    def begin(self) -> None:
        """Take a slot of the node's in-flight window before a record starts executing."""
        self._window.acquire()

    def abandon(self) -> None:
        """Give the slot back for a record that will not be acknowledged (it failed)."""
        self._window.release()

    def ack(self, running: Running, index: int, record: Any, slot: bool = True) -> None:
        """The record succeeded: write its completion soon; its slot (if it took one with
        :meth:`begin`) frees once written."""
        with self._cond:
            self._pending.append((running, index, record))
            self._slots_pending += slot
            self._inflight[running.task.id] += 1
            self._cond.notify_all()

    def drain(self, running: Running) -> None:
        """Wait until every acknowledgement of this task is written."""
        with self._cond:
            while self._inflight.get(running.task.id, 0) > 0 and not self._stop:
                self._cond.wait(0.5)
            self._inflight.pop(running.task.id, None)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def _loop(self) -> None:
        """Stage 1: gather a batch, mark it done in the sources, hand it to stage 2."""
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop and not self._pending:
                    self._stage2.put(None)
                    return
                batch, self._pending = self._pending, []
                slots, self._slots_pending = self._slots_pending, 0
            try:
                step: _Step | None = self._prepare(batch)
            except Exception:
                log.exception("acknowledging %d record(s) failed", len(batch))
                step = None
            if step is None:  # not marked done: their chunks stop and are taken over
                self._give_up(batch)
            self._stage2.put((batch, slots, step))

    def _checkpoint_loop(self) -> None:
        """Stage 2, in batch order: save the progress in the store, then free the slots. It
        overlaps with stage 1's write of the next batch to the business database."""
        while (item := self._stage2.get()) is not None:
            batch, slots, step = item
            try:
                if step is not None:
                    self._checkpoint(*step)
            except Exception:
                log.exception("acknowledging %d record(s) failed", len(batch))
            finally:
                with self._cond:
                    for running, _, _ in batch:
                        self._inflight[running.task.id] -= 1
                    self._cond.notify_all()
                for _ in range(slots):
                    self._window.release()

    def _complete_in_sources(self, by_task: dict[int, Running],
                             records: dict[int, list[Any]]) -> dict[int, int]:
        """Mark the records done where their source keeps state (TableSource), one call per
        source, before acknowledging them to the store. Returns stale completions per task."""
        per_source: dict[int, tuple[Any, list[int]]] = {}
        for task_id, r in by_task.items():
            source = self.w.app.pipelines[r.task.job].source
            if source is not None and hasattr(source, "complete_many"):
                per_source.setdefault(id(source), (source, []))[1].append(task_id)
        stale: dict[int, int] = {}
        for source, task_ids in per_source.values():
            rejected = source.complete_many([
                (by_task[t].task.payload.get("shard"), records[t], by_task[t].task.token)
                for t in task_ids])
            for t, n in zip(task_ids, rejected, strict=True):
                stale[t] = n
        return stale

    def _prepare(self, batch: list[tuple[Running, int, Any]]) -> _Step | None:
        by_task: dict[int, Running] = {}
        records: dict[int, list[Any]] = defaultdict(list)
        for running, index, record in batch:
            # only this thread touches "done"; stage 2 gets a sorted copy
            running.extra.setdefault("done", set()).add(index)
            by_task[running.task.id] = running
            records[running.task.id].append(record)
        stale = retrying(self.w, "mark executed records done",
                         lambda: self._complete_in_sources(by_task, records))
        if stale is None:
            return None
        items = [
            (r.task.id, r.task.token, {"done": sorted(r.extra["done"])},
             r.task.run_id, Counts(executed=len(records[task_id]), stale=stale.get(task_id, 0)))
            for task_id, r in by_task.items()
        ]
        return by_task, items

    def _checkpoint(self, by_task: dict[int, Running],
                    items: list[tuple[int, int, Any, int, Counts]]) -> None:
        stale = with_store(self.w, "checkpoint executed records",
                           lambda: self.w.store.task_checkpoint(items))
        for task_id in by_task if stale is None else stale:
            by_task[task_id].lost = True

    @staticmethod
    def _give_up(batch: list[tuple[Running, int, Any]]) -> None:
        """These records ran but could not be acknowledged: their chunks end here without
        finishing, their leases lapse, and another claim runs the records again."""
        for running, _, _ in batch:
            running.lost = True
