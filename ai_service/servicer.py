"""gRPC adapter of the ai service: translates messages, holds no rules."""

from __future__ import annotations

from tandem_protos.ai.v1 import analysis_pb2_grpc


class AnalysisServicer(analysis_pb2_grpc.AnalysisServiceServicer):
    pass
