"""Which client a call counts against: the users service's rule and the gateway's."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

import pytest
from starlette.requests import Request

from gateway.client_address import client_address as http_client_address
from tandem_client import CLIENT_ADDRESS_KEY
from tests.support.gateway import gateway_settings
from users_service.client_address import address_key, client_address, peer_address
from users_service.policy import Action, Caller, Role

GATEWAY = Caller.service_account("gateway", frozenset({"users.login", "users.signup"}))
READER = Caller.service_account("reports", frozenset({"users.read"}))
ADMIN = Caller.account(uuid.uuid4(), Role.ADMIN, uuid.uuid4())


class Context:
    """The parts of a grpc.aio ServicerContext the rule reads."""

    def __init__(self, peer: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._peer = peer
        self._metadata = metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


NAMED = ((CLIENT_ADDRESS_KEY, "203.0.113.9"),)


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:10.0.0.7:50123", "10.0.0.7"),
        ("ipv6:[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"),
        ("ipv6:%5B::1%5D:50000", "::/64"),
        ("ipv6:[::ffff:10.0.0.7]:1", "10.0.0.7"),
        ("unix:/run/users.sock", "unix:/run/users.sock"),
    ],
)
def test_the_peer_is_its_ip_without_the_port(peer: str, expected: str) -> None:
    assert peer_address(Context(peer)) == expected


def test_a_service_that_may_take_the_action_names_the_client() -> None:
    context = Context("ipv4:10.0.0.2:5000", NAMED)
    assert client_address(context, GATEWAY, Action.LOG_IN) == "203.0.113.9"
    assert client_address(context, GATEWAY, Action.SIGN_UP) == "203.0.113.9"


@pytest.mark.parametrize("caller", [READER, ADMIN, None], ids=["other service", "admin", "none"])
def test_anyone_else_naming_a_client_is_ignored(caller: Caller | None) -> None:
    context = Context("ipv4:10.0.0.2:5000", NAMED)
    assert client_address(context, caller, Action.LOG_IN) == "10.0.0.2"


def test_a_named_client_that_is_not_an_address_is_ignored() -> None:
    context = Context("ipv4:10.0.0.2:5000", ((CLIENT_ADDRESS_KEY, "me, honestly"),))
    assert client_address(context, GATEWAY, Action.LOG_IN) == "10.0.0.2"


def test_ipv6_addresses_count_by_their_64() -> None:
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("2001:db8:0:1::1") == "2001:db8:0:1::/64"
    assert address_key("nope") is None


# --- the gateway ------------------------------------------------------------------------

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def request(peer: str | None, *forwarded: str) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
        "client": (peer, 40000) if peer is not None else None,
    }
    return Request(scope)


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert http_client_address(request("10.0.0.5", "203.0.113.9"), ()) == "10.0.0.5"


def test_from_a_proxy_not_trusted_the_header_is_ignored() -> None:
    assert http_client_address(request("198.51.100.1", "203.0.113.9"), PROXIES) == "198.51.100.1"


def test_through_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() -> None:
    # The client wrote the first two hops itself; the proxies appended the rest.
    spoofed = request("10.0.0.5", "1.2.3.4, 198.51.100.66", "203.0.113.9, 10.1.1.1")
    assert http_client_address(spoofed, PROXIES) == "203.0.113.9"


def test_hops_may_carry_ports_and_ipv6() -> None:
    assert http_client_address(request("10.0.0.5", "203.0.113.9:5555"), PROXIES) == "203.0.113.9"
    assert http_client_address(request("fd00::1", "[2001:db8::7]:443"), PROXIES) == "2001:db8::7"
    assert http_client_address(request("::ffff:10.0.0.5", "203.0.113.9"), PROXIES) == (
        "203.0.113.9"
    )


def test_a_broken_hop_makes_the_nearest_trusted_proxy_the_client() -> None:
    assert http_client_address(request("10.0.0.5", "garbage, 10.2.2.2"), PROXIES) == "10.2.2.2"


def test_only_trusted_proxies_make_the_nearest_one_the_client() -> None:
    assert http_client_address(request("10.0.0.5", "10.3.3.3, 10.2.2.2"), PROXIES) == "10.3.3.3"
    assert http_client_address(request("10.0.0.5"), PROXIES) == "10.0.0.5"


def test_a_request_without_a_peer_has_no_client() -> None:
    assert http_client_address(request(None, "203.0.113.9"), PROXIES) is None


def test_the_setting_takes_cidr_ranges_separated_by_commas() -> None:
    settings = gateway_settings("127.0.0.1:1", "127.0.0.1:1", trusted_proxies="10.0.0.0/8, ::1")
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ValueError, match="CIDR"):
        gateway_settings("127.0.0.1:1", "127.0.0.1:1", trusted_proxies="10.0.0.1/8")
