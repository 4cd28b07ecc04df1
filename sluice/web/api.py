"""JSON the pages poll (the live curves, a run's progress) and ``/metrics`` for Prometheus."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluice.pipeline.progress import target_rate
from sluice.web.pages import job_or_404, store_of


def series(request: Request) -> Response:
    """``{t, loaded, rate, target, achieved}``: per sample, the records loaded in that
    interval and executed per second, with the pipeline's target rate."""
    job = job_or_404(request, request.path_params["name"])
    points = request.app.state.sampler.pipelines.series(job["name"])
    since = request.query_params.get("since", "")
    try:
        cut = float(since) if since else 0.0
    except ValueError:
        return JSONResponse({"error": f"since must be a number, got {since[:40]!r}"}, 400)
    points = [p for p in points if p.t > cut]
    target = target_rate(job)
    achieved = request.app.state.sampler.pipelines.achieved(job["name"], 10.0)
    return JSONResponse({
        "job": job["name"], "t": [p.t for p in points], "loaded": [p.loaded for p in points],
        "rate": [round(p.rate, 3) for p in points], "target": target, "achieved": achieved})


def run_json(request: Request) -> Response:
    run_id: int = request.path_params["run_id"]
    store = store_of(request)
    run = store.run_get(run_id)
    if run is None:
        return JSONResponse({"error": f"there is no run {run_id}"}, 404)
    body: dict[str, Any] = {**run, "shards": store.run_shard_progress(run_id)}
    return JSONResponse(body)


def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        from sluice.metrics import StoreCollector, registry_for

        registry = registry_for(StoreCollector(
            store_of(request), node_ttl=request.app.state.node_ttl,
            rates=request.app.state.sampler.pipelines, outboxes=request.app.state.outboxes))
        request.app.state.metrics_registry = registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/api/pipelines/{name:str}/series", series),
    Route("/api/runs/{run_id:int}", run_json),
    Route("/metrics", metrics),
]
