"""The worker's own web pages: /healthz, /metrics and /stats (the customer API is in agents/api.py)."""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View

from agents.engine.runtime import Runtime
from stream.faust.guards import partition_report
from stream.faust.intake import BatchIntake
from stream.faust.offsets import GapFiller

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"  # Prometheus text exposition


def stats_document(runtime: Runtime, gaps: GapFiller, intake: BatchIntake) -> dict[str, Any]:
    """What /stats answers (without ``?partitions``): outcomes, backlogs, error counters, ruleset, clock."""
    return {"outcomes": dict(runtime.outcomes), "events_waiting_evaluation": runtime.events_waiting,
            "redis_pending": runtime.view.pending,
            "redis_errors": runtime.view.errors, "rule_errors": runtime.rule_errors,
            "ruleset_version": runtime.evaluator.ruleset.version, "now": runtime.clock.now(),
            "rules_reload_errors": runtime.reload_errors, "gap_records": gaps.filled,
            "partition_restarts": runtime.metrics.total(runtime.metrics.partition_restarts),
            "fetched_records_left": intake.left}


def install_pages(app: faust.App, runtime: Runtime, gaps: GapFiller, intake: BatchIntake) -> None:
    """Register /healthz, /metrics and /stats."""

    @app.page("/healthz")
    async def healthz(web: View, request: Request) -> Response:
        return web.json({"status": "alive"})

    @app.page("/metrics")
    async def metrics(web: View, request: Request) -> Response:
        return web.bytes(runtime.metrics.render(), content_type=METRICS_CONTENT_TYPE)

    @app.page("/stats")
    async def stats(web: View, request: Request) -> Response:
        doc = stats_document(runtime, gaps, intake)
        if "partitions" in request.query:  # each assigned partition's fetch/commit state (costs a walk over them)
            doc["partitions"] = partition_report(app.consumer, runtime.last_offset)
        return web.json(doc)
