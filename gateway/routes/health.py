"""`/healthz` (the process runs) and `/readyz` (both upstreams answer SERVING)."""

from __future__ import annotations

import asyncio

from fastapi import Response

from gateway import convert
from gateway.deps import RuntimeDep
from gateway.problems import ProblemError, problem_responses
from gateway.routes import resource_router
from gateway.schemas import Health, Readiness

router = resource_router(tags=["health"])

SERVING = "SERVING"


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Response:
    return convert.json_response({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: both upstreams serve",
    description="Asks each upstream's `grpc.health.v1.Health/Check` for its service.",
    responses=problem_responses(503),
)
async def readyz(runtime: RuntimeDep) -> Response:
    upstreams = runtime.upstreams
    deadline = runtime.settings.ready_deadline_seconds
    users, ai = await asyncio.gather(
        upstreams.users.health(deadline), upstreams.ai.health(deadline)
    )
    statuses = {"users": users, "ai": ai}
    failing = [f"{name} is {status}" for name, status in statuses.items() if status != SERVING]
    if failing:
        raise ProblemError(503, "not ready: " + ", ".join(failing))
    return convert.json_response({"status": "ready", "upstreams": statuses})
