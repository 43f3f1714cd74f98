"""`python -m servicekit.healthcheck [--service NAME] [TLS options] HOST:PORT [--timeout S]`.

Asks a server's `grpc.health.v1.Health/Check` about one service (the empty name, the
default, stands for the whole server) and exits 0 when it is SERVING, 1 otherwise with
one line on stderr saying why. It is the container healthcheck of the gRPC services:
the images have no grpc_health_probe binary, but they have this Python and grpcio.

TLS: `--cacert FILE` makes it connect with TLS, trusting that CA; `--cert FILE` and
`--key FILE` add a client certificate, for an mTLS server; `--server-name NAME` checks
the server's certificate against NAME instead of HOST (a probe connects to 127.0.0.1,
the certificate names the service, e.g. users.tandem.svc).

In Kubernetes, the native `grpc:` probe cannot do TLS at all (it dials plaintext), so a
TLS or mTLS server is probed with an `exec` probe running this module with
certificates the pod mounts, on the same port the service answers on:

    readinessProbe:
      exec:
        command: [python, -m, servicekit.healthcheck, --service, users.v1.UsersService,
                  --cacert, /tls/ca.crt, --cert, /probe/tls.crt, --key, /probe/tls.key,
                  --server-name, users.tandem.svc, 127.0.0.1:50051]

Health needs no bearer token; under mTLS, though, the probe needs a client certificate
the server's client CA issued, like any other caller.

Only grpcio, the health stubs and servicekit.tls (which leaves importing cryptography
to servers) are imported, not the services: the check runs every few seconds in each
container, so it should start quickly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servicekit.tls import channel_credentials

SERVING = health_pb2.HealthCheckResponse.SERVING

CHANNEL_OPTIONS: Sequence[tuple[str, int | str]] = (
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
    tls = parser.add_argument_group("TLS (plaintext unless --cacert is given)")
    tls.add_argument("--cacert", type=Path, metavar="FILE", help="CA to trust (PEM): use TLS")
    tls.add_argument("--cert", type=Path, metavar="FILE", help="client certificate (PEM), for mTLS")
    tls.add_argument("--key", type=Path, metavar="FILE", help="key of --cert (PEM)")
    tls.add_argument(
        "--server-name",
        metavar="NAME",
        help="the name the server's certificate must carry, if not HOST's",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    if args.cacert is None and (args.cert is not None or args.server_name is not None):
        parser.error("--cert, --key and --server-name need --cacert (TLS)")
    return args


def check(
    target: str,
    service: str = "",
    timeout: float = 2.0,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> str | None:
    """None when `service` at `target` is SERVING, else why it is not (one line).

    With `credentials`, over TLS; `server_name` is the name the certificate must carry.
    """
    options = list(CHANNEL_OPTIONS)
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
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
    args = parse_args(argv)
    what = f"{args.service} at {args.target}" if args.service else args.target
    credentials = None
    if args.cacert is not None:
        try:
            credentials = channel_credentials(args.cacert, args.cert, args.key)
        except OSError as exc:
            sys.stderr.write(f"healthcheck: cannot check {what}: {exc.filename}: {exc.strerror}\n")
            return 1
    problem = check(
        args.target,
        args.service,
        args.timeout,
        credentials=credentials,
        server_name=args.server_name,
    )
    if problem is None:
        return 0
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
