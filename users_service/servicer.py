"""gRPC adapter of the users service: translates messages, holds no rules."""

from __future__ import annotations

from tandem_protos.users.v1 import users_pb2_grpc


class UsersServicer(users_pb2_grpc.UsersServiceServicer):
    pass
