"""The standard grpc.health.v1 service, with watches that end at shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """grpc's servicer, except that a Watch ends once it has sent NOT_SERVING at shutdown.

    The stock Watch never returns, so every open watch would hold the server for the
    whole grace period; ending it lets the process exit as soon as the real calls are
    done, and the watcher has seen NOT_SERVING first.
    """

    async def Watch(  # noqa: N802 - gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        condition = self._server_watchers[request.service]
        self._watcher_count_by_service[request.service] += 1
        last_status = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(
                        request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    )
                    if status != last_status:
                        yield health_pb2.HealthCheckResponse(status=status)
                        last_status = status
                    if self._gracefully_shutting_down and status == NOT_SERVING:
                        return
                    await condition.wait()
        finally:
            self._watcher_count_by_service[request.service] -= 1
            if self._watcher_count_by_service[request.service] == 0:
                del self._server_watchers[request.service]
                del self._watcher_count_by_service[request.service]
