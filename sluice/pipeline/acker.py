"""Group commit of executed records: one store write acknowledges many records.

A record holds one of the node's ``concurrency`` record slots from the moment it starts until
its completion is durably written. So when a node is killed, the records that ran but were not
yet acknowledged, plus those running, number at most ``concurrency``: only those run again
elsewhere. While one write is in flight the next batch gathers, so a busy node writes large
batches and an idle one writes at once.
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
        self.slots = threading.Semaphore(worker.settings.concurrency)
        self._cond = threading.Condition()
        self._pending: list[tuple[Running, int, Any]] = []
        self._inflight: dict[int, int] = defaultdict(int)  # task id -> unacknowledged records
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="sluice-acker", daemon=True)
        self._thread.start()

    def begin(self) -> None:
        """Take a record slot (blocks while ``concurrency`` records are unacknowledged)."""
        self.slots.acquire()

    def ack(self, running: Running, index: int, record: Any) -> None:
        with self._cond:
            self._pending.append((running, index, record))
            self._inflight[running.task.id] += 1
            self._cond.notify_all()

    def release(self) -> None:
        """Give back a slot without an acknowledgement (the record failed)."""
        self.slots.release()

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
                for _ in batch:
                    self.slots.release()
                with self._cond:
                    for running, _, _ in batch:
                        self._inflight[running.task.id] -= 1
                    self._cond.notify_all()

    def _write(self, batch: list[tuple[Running, int, Any]]) -> None:
        by_task: dict[int, Running] = {}
        records: dict[int, list[Any]] = defaultdict(list)
        for running, index, record in batch:
            running.extra.setdefault("done", set()).add(index)
            by_task[running.task.id] = running
            records[running.task.id].append(record)
        pipe_source = {r.task.id: self.w.app.pipelines[r.task.job].source for r in by_task.values()}
        for task_id, running in by_task.items():
            source = pipe_source[task_id]
            if source is not None and hasattr(source, "complete"):
                rejected = source.complete(running.task.payload.get("shard"), records[task_id],
                                           running.task.token)
                running.extra["stale"] = running.extra.get("stale", 0) + rejected
        window = self.w.settings.concurrency
        items = [
            (r.task.id, r.task.token, {"done": sorted(r.extra["done"]), "window": window},
             r.task.run_id, Counts(executed=len(records[task_id]),
                                   stale=r.extra.pop("stale", 0)))
            for task_id, r in by_task.items()
        ]
        stale = with_store(self.w, "checkpoint executed records",
                           lambda: self.w.store.task_checkpoint(items)) or set()
        for task_id in stale:
            by_task[task_id].lost = True
