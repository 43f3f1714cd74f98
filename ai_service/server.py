"""Builds and runs the ai service: engine, schema check, servicer, gRPC server."""

from __future__ import annotations

from functools import partial

from ai_service.migrations import MIGRATIONS
from ai_service.servicer import AnalysisServicer
from ai_service.settings import AiSettings
from servicekit.database import create_engine
from servicekit.migrations import check_at_head
from servicekit.server import Service, build_server, serve_until_signalled
from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc

SERVICE_NAME = analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name


async def serve(settings: AiSettings) -> None:
    engine = create_engine(settings, application_name="tandem-ai")
    try:
        await check_at_head(engine, MIGRATIONS, "python -m ai_service migrate")
        servicer = AnalysisServicer()  # type: ignore[abstract]
        server = build_server(
            settings.addr,
            [
                Service(
                    SERVICE_NAME,
                    partial(analysis_pb2_grpc.add_AnalysisServiceServicer_to_server, servicer),
                )
            ],
            access_log=settings.access_log,
        )
        await serve_until_signalled(server, settings.shutdown_grace_seconds)
    finally:
        await engine.dispose()
