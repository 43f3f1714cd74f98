"""Tandem's gRPC services, which of their methods are safe to retry, and the channel
configuration that follows.

A channel made with `channel_options(...)` balances calls over every address its
target resolves to (`round_robin`: several replicas share the load, a dead one is
skipped) and retries the idempotent methods on UNAVAILABLE and CANCELLED; calls that
change state are never retried by the channel. Calls do not wait for a connection (no
`wait_for_ready`): an unreachable service fails fast with UNAVAILABLE, a silent one at
its deadline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tandem_protos.ai.v1 import analysis_pb2
from tandem_protos.users.v1 import auth_pb2, users_pb2

USERS_SERVICE = users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name
AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
AI_SERVICE = analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name
# The ai service's long-running operations (BatchAnalyzeTexts), on the same target.
OPERATIONS_SERVICE = "google.longrunning.Operations"
SERVICES: tuple[str, ...] = (USERS_SERVICE, AUTH_SERVICE, AI_SERVICE, OPERATIONS_SERVICE)

# Methods marked `idempotency_level = NO_SIDE_EFFECTS` in the protos: safe to send twice.
IDEMPOTENT_METHODS: Mapping[str, Sequence[str]] = {
    USERS_SERVICE: ("GetUser", "BatchGetUsers", "ListUsers"),
    AUTH_SERVICE: ("GetJsonWebKeySet", "BatchGetSessions"),
    AI_SERVICE: ("GetAnalysis", "ListAnalyses"),
    OPERATIONS_SERVICE: ("GetOperation", "ListOperations", "WaitOperation"),
}
RETRY_POLICY: Mapping[str, Any] = {
    "maxAttempts": 3,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    # CANCELLED too: a server that stops cancels the calls it received but had not yet
    # handed to a handler (grpc/grpc#41785), so a read sent as a replica drains can
    # come back CANCELLED though it never ran. Only a status the server sent is retried;
    # a call the caller cancelled is over.
    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
}


def is_idempotent(service: str, method: str) -> bool:
    """True when `service`'s `method` (`users.v1.UsersService`, `GetUser`) may be retried."""
    return method in IDEMPOTENT_METHODS.get(service, ())


def service_config(services: Sequence[str]) -> str:
    """The channel's service config: round_robin, and retries for the idempotent methods."""
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": m}
                    for service in services
                    for m in IDEMPOTENT_METHODS[service]
                ],
                "retryPolicy": RETRY_POLICY,
            }
        ],
    }
    return json.dumps(config)


def channel_options(services: Sequence[str] = SERVICES) -> list[tuple[str, Any]]:
    """The options of a channel to `services` (by default, every one of Tandem's)."""
    return [
        ("grpc.service_config", service_config(services)),
        # Ours, not one a DNS TXT record might carry.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        # Ping idle connections so a dead peer is noticed (the services allow pings
        # every 10 s or more without calls).
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect to a restarted service within seconds, not grpc's default 2 minutes.
        # (Not `grpc.min_reconnect_backoff_ms`: it is also the connect timeout, 20 s.)
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 3_000),
        # Each channel its own connections: in grpc's process-wide pool a new channel
        # shares the subchannel of any other to the same address, and with it a failed
        # connect's backoff, so it would fail fast on a server that is up by now.
        ("grpc.use_local_subchannel_pool", 1),
    ]
