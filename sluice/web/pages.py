"""The dashboard's pages: jobs, one job (runs, live curves, parked records), one run (per-shard
progress), nodes, parked records and outbox backlog. Reads only; every value from a URL is a
typed path parameter or checked, then passed to the store as a query parameter."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from sluice.app import stored_schedule
from sluice.errors import ConfigError
from sluice.pipeline.progress import target_rate
from sluice.store import Store
from sluice.web.app import render

FINAL = ("succeeded", "failed", "lost", "cancelled", "skipped", "missed")


def store_of(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def job_or_404(request: Request, name: str) -> dict[str, Any]:
    job = store_of(request).job_get(name)
    if job is None:
        raise HTTPException(404, f"There is no job named {name!r}.")
    return job


def describe(job: dict[str, Any]) -> str:
    try:
        schedule = stored_schedule(job)
    except ConfigError as exc:
        return f"invalid: {exc}"
    return schedule.describe() if schedule is not None else "manual"


def with_duration(run: dict[str, Any]) -> dict[str, Any]:
    start, end = run.get("started_at"), run.get("finished_at")
    run["duration"] = end - start if start and end else None
    return run


def jobs_page(request: Request) -> Response:
    store = store_of(request)
    latest = store.run_latest_by_job()
    rows = []
    for job in store.job_list():
        last = latest.get(job["name"])
        rows.append({"name": job["name"], "kind": job["kind"], "schedule": describe(job),
                     "routing": "pipeline" if job["kind"] == "pipeline"
                     else job["spec"].get("routing"),
                     "next_fire_at": job["next_fire_at"], "paused": job["paused"],
                     "qps": target_rate(job), "last": with_duration(last) if last else None})
    return render(request, "jobs.html", jobs=rows, nav="jobs")


def job_page(request: Request, message: str | None = None, status: int = 200) -> Response:
    name = request.path_params["name"]
    job = job_or_404(request, name)
    store = store_of(request)
    runs = [with_duration(r) for r in store.run_list(name, 25)]
    parked = store.dead_list(name, 100) if job["kind"] == "pipeline" else []
    return render(request, "job.html", status, job=job, schedule=describe(job), runs=runs,
                  parked=parked, qps=target_rate(job), message=message, nav="jobs")


def run_page(request: Request) -> Response:
    run_id: int = request.path_params["run_id"]
    store = store_of(request)
    run = store.run_get(run_id)
    if run is None:
        raise HTTPException(404, f"There is no run {run_id}.")
    shards = store.run_shard_progress(run_id)
    tasks = [] if shards else store.run_tasks(run_id)
    fragment = request.query_params.get("fragment") == "1"
    return render(request, "run_body.html" if fragment else "run.html", run=with_duration(run),
                  shards=shards, tasks=tasks, final=run["state"] in FINAL, nav="jobs")


def runs_page(request: Request) -> Response:
    runs = [with_duration(r) for r in store_of(request).run_list(None, 100)]
    return render(request, "runs.html", runs=runs, nav="runs")


def nodes_page(request: Request) -> Response:
    store = store_of(request)
    nodes = store.node_list_live(request.app.state.node_ttl)
    rates = request.app.state.sampler.nodes.rates()
    totals: dict[str, float] = {}
    for per_job in rates.values():
        for job, rate in per_job.items():
            totals[job] = totals.get(job, 0.0) + rate
    targets = {j["name"]: target_rate(j) for j in store.job_list() if j["kind"] == "pipeline"}
    for n in nodes:
        n["running"] = n["info"].get("running") or {}
        n["shares"] = [
            {"job": job, "rate": rate, "share": rate / totals[job] if totals.get(job) else 0.0,
             "fair": (targets.get(job) or 0.0) / len(nodes) if targets.get(job) else None}
            for job, rate in sorted(rates.get(n["id"], {}).items()) if rate > 0]
    return render(request, "nodes.html", nodes=nodes, nav="nodes")


def parked_page(request: Request, message: str | None = None, status: int = 200) -> Response:
    store = store_of(request)
    counts = store.dead_count_by_job()
    outboxes = [o.status() for o in request.app.state.outboxes]
    return render(request, "parked.html", status, counts=counts, outboxes=outboxes,
                  message=message, nav="parked")


def index(request: Request) -> Response:
    return RedirectResponse("/jobs", status_code=302)


routes = [
    Route("/", index),
    Route("/jobs", jobs_page),
    Route("/jobs/{name:str}", job_page),
    Route("/runs", runs_page),
    Route("/runs/{run_id:int}", run_page),
    Route("/nodes", nodes_page),
    Route("/parked", parked_page),
]
