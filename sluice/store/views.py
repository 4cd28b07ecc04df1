"""Read-only views of the store for the dashboard, ``sluice status`` and the metrics.

A mixin of ``Store``: the same named statements (``sql/queries.sql``), run in read
transactions that never queue behind the workers' writes. Nothing here is on the hot path.
"""

from __future__ import annotations

import json

from sluice.store.drivers import Driver, Row


class ReadViews:
    db: Driver

    def run_latest_by_job(self) -> dict[str, Row]:
        """Each job's most recent run, by job name."""
        with self.db.read() as tx:
            rows = tx.all("run_latest_by_job")
        for row in rows:
            row["stats"] = json.loads(row["stats"])
        return {r["job"]: r for r in rows}

    def run_count_by_state(self) -> list[Row]:
        """``{job, state, n}``: how many runs each job has in each state."""
        with self.db.read() as tx:
            return tx.all("run_count_by_state")

    def run_totals_by_job(self) -> dict[str, Row]:
        """Record counters summed over every run of each job (loaded, executed, failed,
        parked)."""
        with self.db.read() as tx:
            rows = tx.all("run_totals_by_job")
        return {r["job"]: {k: int(r[k] or 0) for k in ("loaded", "executed", "failed", "parked")}
                for r in rows}

    def run_progress(self, jobs: list[str], ids: list[int]) -> list[Row]:
        """Counters of the active runs of ``jobs`` and of the runs ``ids`` (e.g. the ones
        active at the previous sample, to read their final counts), each with the database
        time ``now``: what rate curves are sampled from."""
        with self.db.read() as tx:
            if self.db.dialect == "postgresql":
                return tx.all("run_progress", jobs=jobs, ids=ids)
            return tx.all("run_progress", jobs=json.dumps(jobs), ids=json.dumps(ids))

    def run_fire_lag(self) -> dict[str, float]:
        """For each job, how late its latest scheduled firing was recorded (seconds)."""
        with self.db.read() as tx:
            return {r["job"]: max(0.0, float(r["lag"])) for r in tx.all("run_fire_lag")}

    def run_shard_progress(self, run_id: int) -> list[Row]:
        """Per shard of a pipeline run: its loader's state, chunks done and open, records
        loaded and executed."""
        with self.db.read() as tx:
            rows = tx.all("task_shard_progress", run_id=run_id)
        shards: dict[str, Row] = {}
        for r in rows:
            key = "" if r["shard"] is None else str(r["shard"])
            s = shards.setdefault(key, {"shard": key, "load": "done", "chunks": 0,
                                        "chunks_done": 0, "loaded": 0, "executed": 0})
            if r["kind"] == "load":
                s["load"] = r["state"]
            else:
                s["chunks"] += int(r["tasks"])
                s["chunks_done"] += int(r["tasks"]) if r["state"] in ("done", "dead") else 0
            s["loaded"] += int(r["loaded"] or 0)
            s["executed"] += int(r["executed"] or 0)
        return sorted(shards.values(), key=lambda s: s["shard"])

    def dead_count_by_job(self) -> dict[str, int]:
        """Parked records not yet sent back, by job."""
        with self.db.read() as tx:
            return {r["job"]: int(r["n"]) for r in tx.all("dead_count_by_job")}
