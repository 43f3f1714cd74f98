"""The gateway's `Idempotency-Key` header: which values it takes, the request id each
becomes, and the HTTP status of a reused key."""

from __future__ import annotations

import uuid

import grpc
import pytest

from gateway.idempotency import KEY_NAMESPACE, parse_key, request_id_for
from gateway.problems import ProblemError
from gateway.upstream_errors import http_status
from servicekit.idempotency import KEY_IN_FLIGHT, KEY_REUSED
from tandem_client import RpcError


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("KG5LxwFBepaKHyUD", "KG5LxwFBepaKHyUD"),
        ("  padded  ", "padded"),
        ("with inner space", "with inner space"),
        ('"a \\"quoted\\" \\\\ key"', 'a "quoted" \\ key'),
        ("x" * 255, "x" * 255),
    ],
)
def test_keys_bare_or_as_structured_field_strings(header: str, key: str) -> None:
    assert parse_key(header) == key


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "must be 1 to 255 characters"),
        ('""', "must be 1 to 255 characters"),
        ("x" * 256, "must be 1 to 255 characters"),
        ("tab\there", "must be printable ASCII characters"),
        ("café", "must be printable ASCII characters"),
        ('"bad \\n escape"', "has an escape other than"),
        ('"inner " quote"', "has a quote inside its string"),
    ],
)
def test_other_values_are_400_naming_the_header(header: str, message: str) -> None:
    with pytest.raises(ProblemError) as raised:
        parse_key(header)
    assert raised.value.status == 400
    ((field, said),) = raised.value.errors
    assert field == "idempotency-key"
    assert said.startswith(message)


def test_a_key_is_the_same_request_id_every_time_and_no_key_a_new_one() -> None:
    key = "order-42"
    assert request_id_for(key) == request_id_for('"order-42"') == request_id_for(key)
    assert request_id_for(key) == str(uuid.uuid5(KEY_NAMESPACE, key))
    assert request_id_for("order-43") != request_id_for(key)
    fresh = {request_id_for(None) for _ in range(3)}
    assert len(fresh) == 3
    assert all(uuid.UUID(r).version == 4 for r in fresh)


def test_a_reused_key_is_422_and_one_in_flight_409() -> None:
    reused = RpcError(grpc.StatusCode.FAILED_PRECONDITION, "reused", reason=KEY_REUSED)
    in_flight = RpcError(grpc.StatusCode.ABORTED, "running", reason=KEY_IN_FLIGHT)
    other = RpcError(grpc.StatusCode.FAILED_PRECONDITION, "no", reason="USER_NOT_DELETED")
    assert (http_status(reused), http_status(in_flight), http_status(other)) == (422, 409, 400)
