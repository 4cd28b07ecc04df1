"""Prometheus metrics: the cluster's, read from the store (the dashboard's ``/metrics``), and one
worker's, from its own counters (``sluice worker --metrics-port``).

Collected at scrape time: nothing is counted twice and nothing runs between scrapes. Needs the
``metrics`` extra (``prometheus-client``). Names follow the Prometheus conventions: a
``sluice_`` prefix, base units (seconds), ``_total`` on counters. See docs/operations.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from sluice.pipeline.progress import RateTracker, target_rate
from sluice.store import Store
from sluice.worker.stats import BUCKETS

if TYPE_CHECKING:
    from sluice.worker.worker import Worker

RECORD_COUNTERS = ("loaded", "executed", "failed", "parked")


def _histogram(per_job: dict[str, dict[str, Any]]) -> HistogramMetricFamily:
    h = HistogramMetricFamily("sluice_execute_duration_seconds",
                              "Time one record's execute call took", labels=["job"])
    for job, s in sorted(per_job.items()):
        cumulative, buckets = 0, []
        for bound, n in zip((*BUCKETS, float("inf")), s["buckets"], strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        h.add_metric([job], buckets, s["sum"])
    return h


def merge_stats(snapshots: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Add up the per-job counters and histograms of several nodes."""
    out: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        for job, s in snap.items():
            m = out.setdefault(job, {"executed": 0, "failed": 0, "parked": 0, "sum": 0.0,
                                     "buckets": [0] * (len(BUCKETS) + 1)})
            for key in ("executed", "failed", "parked", "sum"):
                m[key] += s.get(key, 0)
            if len(s.get("buckets", [])) == len(m["buckets"]):
                m["buckets"] = [a + b for a, b in zip(m["buckets"], s["buckets"], strict=True)]
    return out


class StoreCollector:
    """The cluster as the store sees it. ``rates`` supplies the achieved rates (the dashboard's
    sampler); ``outboxes`` the outbox tables to report on."""

    def __init__(self, store: Store, *, node_ttl: float, rates: RateTracker,
                 outboxes: list[Any] | None = None) -> None:
        self.store = store
        self.node_ttl = node_ttl
        self.rates = rates
        self.outboxes = outboxes or []

    def collect(self) -> Iterator[Metric]:
        jobs = self.store.job_list()
        yield from self._runs({j["name"] for j in jobs if j["kind"] == "pipeline"})
        yield from self._jobs(jobs)
        yield from self._pipelines(jobs)
        yield from self._nodes()
        yield from self._outboxes()

    def _runs(self, pipelines: set[str]) -> Iterator[Metric]:
        runs = GaugeMetricFamily("sluice_runs", "Runs by job and state", labels=["job", "state"])
        for r in self.store.run_count_by_state():
            runs.add_metric([r["job"], r["state"]], r["n"])
        yield runs
        totals = self.store.run_totals_by_job()
        for key in RECORD_COUNTERS:
            c = CounterMetricFamily(f"sluice_records_{key}", f"Pipeline records {key}, over "
                                    "every run", labels=["job"])
            for job, t in sorted(totals.items()):
                if job in pipelines:
                    c.add_metric([job], t[key])
            yield c
        parked = GaugeMetricFamily("sluice_parked_records", "Parked records not yet retried",
                                   labels=["job"])
        for job, n in sorted(self.store.dead_count_by_job().items()):
            parked.add_metric([job], n)
        yield parked

    def _jobs(self, jobs: list[dict[str, Any]]) -> Iterator[Metric]:
        paused = GaugeMetricFamily("sluice_job_paused", "1 when the job is paused",
                                   labels=["job"])
        overdue = GaugeMetricFamily("sluice_fire_overdue_seconds", "How long the job's next "
                                    "firing is past due (0 when not due yet)", labels=["job"])
        lag = GaugeMetricFamily("sluice_fire_lag_seconds", "How late the latest scheduled "
                                "firing was recorded after its instant", labels=["job"])
        now = self.store.clock()
        for j in jobs:
            paused.add_metric([j["name"]], int(j["paused"]))
            if j["next_fire_at"] is not None and not j["paused"]:
                overdue.add_metric([j["name"]], max(0.0, now - j["next_fire_at"]))
        for job, seconds in sorted(self.store.run_fire_lag().items()):
            lag.add_metric([job], seconds)
        yield from (paused, overdue, lag)

    def _pipelines(self, jobs: list[dict[str, Any]]) -> Iterator[Metric]:
        target = GaugeMetricFamily("sluice_pipeline_rate_target_records_per_second",
                                   "The pipeline's target execute rate (qps)", labels=["job"])
        achieved = GaugeMetricFamily("sluice_pipeline_rate_achieved_records_per_second",
                                     "Records executed per second over the last 10 s",
                                     labels=["job"])
        backlog = GaugeMetricFamily("sluice_pipeline_backlog_records", "Records loaded but "
                                    "not yet executed or parked, in active runs",
                                    labels=["job"])
        waiting: dict[str, int] = {}
        pipelines = [j["name"] for j in jobs if j["kind"] == "pipeline"]
        for r in self.store.run_progress(pipelines, []):
            if r["state"] in ("pending", "running"):
                left = int(r["loaded"]) - int(r["executed"]) - int(r["parked"])
                waiting[r["job"]] = waiting.get(r["job"], 0) + max(0, left)
        for j in jobs:
            if j["kind"] != "pipeline":
                continue
            name, qps = j["name"], target_rate(j)
            if qps is not None:
                target.add_metric([name], qps)
            achieved.add_metric([name], self.rates.achieved(name, 10.0) or 0.0)
            backlog.add_metric([name], waiting.get(name, 0))
        yield from (target, achieved, backlog)

    def _nodes(self) -> Iterator[Metric]:
        live = GaugeMetricFamily("sluice_nodes_live", "Live worker nodes",
                                 labels=["group", "zone"])
        counts: dict[tuple[str, str], int] = {}
        nodes = self.store.node_list_live(self.node_ttl)
        for n in nodes:
            key = (n["grp"] or "", n["zone"] or "")
            counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            live.add_metric(list(key), count)
        yield live
        yield _histogram(merge_stats([n["info"].get("stats") or {} for n in nodes]))

    def _outboxes(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily("sluice_outbox_pending_messages", "Outbox messages not "
                                    "yet sent", labels=["table"])
        oldest = GaugeMetricFamily("sluice_outbox_oldest_pending_age_seconds", "Age of the "
                                   "oldest unsent outbox message", labels=["table"])
        parked = GaugeMetricFamily("sluice_outbox_parked_messages", "Outbox messages parked "
                                   "after their last attempt", labels=["table"])
        for outbox in self.outboxes:
            s = outbox.status()
            pending.add_metric([s["table"]], s["pending"])
            oldest.add_metric([s["table"]], s["oldest_pending_age_seconds"] or 0.0)
            parked.add_metric([s["table"]], s["parked"])
        yield from (pending, oldest, parked)


class WorkerCollector:
    """One worker process: what it executed and holds now."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker

    def collect(self) -> Iterator[Metric]:
        stats = self.w.stats.snapshot()
        for key in ("executed", "failed", "parked"):
            c = CounterMetricFamily(f"sluice_node_records_{key}", f"Records {key} by this "
                                    "worker process", labels=["job"])
            for job, s in sorted(stats.items()):
                c.add_metric([job], s[key])
            yield c
        yield _histogram(stats)
        with self.w._lock:
            running = [r.task.job for r in self.w.running.values()]
            free = self.w._free
        tasks = GaugeMetricFamily("sluice_node_tasks_in_flight", "Tasks this worker runs now",
                                  labels=["job"])
        for job in sorted(set(running)):
            tasks.add_metric([job], running.count(job))
        yield tasks
        yield GaugeMetricFamily("sluice_node_slots_free", "Free handler slots", value=free)
        yield GaugeMetricFamily("sluice_node_up_seconds", "Seconds since this worker started",
                                value=time.monotonic() - self.w.started)


def registry_for(collector: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def serve_worker_metrics(worker: Worker, port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` for this worker on ``port`` (a daemon thread)."""
    start_http_server(port, addr=addr, registry=registry_for(WorkerCollector(worker)))
