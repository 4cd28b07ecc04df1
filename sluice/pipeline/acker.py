"""Group commit of executed records: one store write acknowledges many records.

A chunk's thread starts its next record only once the previous one's completion is durably
written. So each of a node's ``concurrency`` threads has at most one record that ran (or is
running) without being acknowledged: a killed node's work re-runs at most ``concurrency``
records elsewhere. While one write is in flight the next batch gathers from all threads, so a
busy node writes large batches and an idle one writes at once.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sluice.store import Counts
from sluice.worker.runners import with_store

if TYPE_CHECKING:
    from sluice.worker.worker import Running, Worker

log = logging.getLogger("sluice.pipeline")


class Acker:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        # The writer waits on the condition; each chunk thread on its own event, set when its
        # last acknowledgement is written. (One condition for all woke every waiting thread on
        # every ack: at thousands of records a second that was most of a busy node's CPU.)
        self._cond = threading.Condition()
        self._written: dict[int, threading.Event] = {}  # task id -> all its acks written
        self._pending: list[tuple[Running, int, Any]] = []
        self._inflight: dict[int, int] = defaultdict(int)  # task id -> unacknowledged records
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="sluice-acker", daemon=True)
        self._thread.start()

    def ack(self, running: Running, index: int, record: Any) -> None:
        with self._cond:
            self._pending.append((running, index, record))
            self._inflight[running.task.id] += 1
            self._written.setdefault(running.task.id, threading.Event()).clear()
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

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop and not self._pending:
                    return
                batch, self._pending = self._pending, []
            try:
                self._write(batch)
            except Exception:
                log.exception("acknowledging %d record(s) failed", len(batch))
            finally:
                with self._cond:
                    for running, _, _ in batch:
                        task_id = running.task.id
                        self._inflight[task_id] -= 1
                        if self._inflight[task_id] <= 0 and task_id in self._written:
                            self._written[task_id].set()

    def _complete_in_sources(self, by_task: dict[int, Running],
                             records: dict[int, list[Any]]) -> None:
        """Mark the records done where their source keeps state (TableSource), one call per
        source, before acknowledging them to the store."""
        per_source: dict[int, tuple[Any, list[int]]] = {}
        for task_id, r in by_task.items():
            source = self.w.app.pipelines[r.task.job].source
            if source is not None and hasattr(source, "complete_many"):
                per_source.setdefault(id(source), (source, []))[1].append(task_id)
        for source, task_ids in per_source.values():
            rejected = source.complete_many([
                (by_task[t].task.payload.get("shard"), records[t], by_task[t].task.token)
                for t in task_ids])
            for t, n in zip(task_ids, rejected, strict=True):
                by_task[t].extra["stale"] = by_task[t].extra.get("stale", 0) + n

    def _write(self, batch: list[tuple[Running, int, Any]]) -> None:
        by_task: dict[int, Running] = {}
        records: dict[int, list[Any]] = defaultdict(list)
        for running, index, record in batch:
            running.extra.setdefault("done", set()).add(index)
            by_task[running.task.id] = running
            records[running.task.id].append(record)
        self._complete_in_sources(by_task, records)
        items = [
            (r.task.id, r.task.token, {"done": sorted(r.extra["done"])},
             r.task.run_id, Counts(executed=len(records[task_id]),
                                   stale=r.extra.pop("stale", 0)))
            for task_id, r in by_task.items()
        ]
        stale = with_store(self.w, "checkpoint executed records",
                           lambda: self.w.store.task_checkpoint(items)) or set()
        for task_id in stale:
            by_task[task_id].lost = True
