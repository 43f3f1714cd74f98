"""`python -m servicekit.healthcheck [--service NAME] HOST:PORT [--timeout S]`.

Asks a server's `grpc.health.v1.Health/Check` about one service (the empty name, the
default, stands for the whole server) and exits 0 when it is SERVING, 1 otherwise with
one line on stderr saying why. It is the container healthcheck of the gRPC services:
the images have no grpc_health_probe binary, but they have this Python and grpcio.

Only grpcio and the health stubs are imported, not the services: the check runs every
few seconds in each container, so it should start quickly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING

CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    # A health check asks the server right here; an HTTP(S)_PROXY set for the
    # container's outbound traffic must not reroute it.
    ("grpc.enable_http_proxy", 0),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m servicekit.healthcheck",
        description="Exit 0 if the gRPC server at TARGET reports SERVING, else 1.",
    )
    parser.add_argument("target", metavar="HOST:PORT", help="the server to ask (any gRPC target)")
    parser.add_argument(
        "--service",
        default="",
        help="the service to ask about, e.g. users.v1.UsersService (default: the server)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=2.0,
        help="seconds to wait for the answer, connecting included (default: 2)",
    )
    return parser


def check(target: str, service: str = "", timeout: float = 2.0) -> str | None:
    """None when `service` at `target` is SERVING, else why it is not (one line)."""
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            details: str | None = error.details()
            return f"{code.name}: {_one_line(details or 'no details')}"
    if reply.status == SERVING:
        return None
    return f"status is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check(args.target, args.service, args.timeout)
    if problem is None:
        return 0
    what = f"{args.service} at {args.target}" if args.service else args.target
    sys.stderr.write(f"healthcheck: {what} is not serving: {problem}\n")
    return 1


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {value!r}")
    return seconds


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
