from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from servicekit.errors import FieldViolation, InvalidArgument, Violations, parse_id
from users_service import domain


def run_check(function: Callable[[str, str, Violations], str], raw: str) -> tuple[str, list[str]]:
    violations = Violations()
    value = function(raw, "f", violations)
    try:
        violations.check()
    except InvalidArgument as error:
        return value, [v.description for v in error.violations]
    return value, []


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("ada@example.com", "ada@example.com"),
        ("  Ada@EXAMPLE.COM\t", "Ada@example.com"),
        ("ünïcode@exämple.com", "ünïcode@exämple.com"),
    ],
)
def test_emails_are_trimmed_and_normalised(raw: str, normalised: str) -> None:
    assert run_check(domain.normalize_email, raw) == (normalised, [])


@pytest.mark.parametrize("raw", ["", "   ", "no-at-sign", "a@b", "two@@example.com", "x@-bad-.com"])
def test_invalid_emails_are_violations(raw: str) -> None:
    _, problems = run_check(domain.normalize_email, raw)
    assert len(problems) == 1


def test_email_keys_ignore_case_everywhere() -> None:
    assert domain.email_key("Ada@Example.com") == domain.email_key("ADA@example.COM")
    assert domain.email_key("STRASSE@x.de") == domain.email_key("strasse@x.de")
    assert domain.login_key("  ADA@Example.com ") == domain.email_key("ADA@example.com")
    assert domain.login_key("not an email") == "not an email"


@pytest.mark.parametrize(
    ("raw", "value", "problems"),
    [
        ("  Ada  ", "Ada", []),
        ("x" * 100, "x" * 100, []),
        (" " + "x" * 100 + " ", "x" * 100, []),
        ("x" * 101, "x" * 101, ["must be at most 100 characters"]),
        ("", "", ["is required"]),
        ("   ", "", ["must not be blank"]),
        ("tab\tinside", "tab\tinside", ["must not contain control characters"]),
    ],
)
def test_name_rules(raw: str, value: str, problems: list[str]) -> None:
    assert run_check(domain.normalize_name, raw) == (value, problems)


@pytest.mark.parametrize(
    ("raw", "problems"),
    [
        ("1234567", ["must be at least 8 characters"]),
        ("12345678", []),
        ("p" * 128, []),
        ("p" * 129, ["must be at most 128 characters"]),
        ("        ", []),  # spaces count: passwords are never trimmed
        ("nul\x00inside", ["must not contain NUL characters"]),
    ],
)
def test_password_rules(raw: str, problems: list[str]) -> None:
    assert run_check(domain.check_password, raw)[1] == problems


def test_violations_collect_every_field() -> None:
    violations = Violations()
    violations.add("a", "bad")
    violations.add("b", "worse")
    with pytest.raises(InvalidArgument) as caught:
        violations.check()
    assert caught.value.violations == (FieldViolation("a", "bad"), FieldViolation("b", "worse"))
    Violations().check()  # nothing collected: no error


def test_parse_id() -> None:
    value = uuid.uuid4()
    assert parse_id(str(value)) == value
    with pytest.raises(InvalidArgument) as caught:
        parse_id("nope", field="user.id")
    assert caught.value.violations == (FieldViolation("user.id", "must be a UUID"),)


@pytest.mark.parametrize(
    ("paths", "populated", "fields"),
    [
        (["name"], ["name", "email"], {"name"}),
        (["email", "name"], [], {"name", "email"}),
        (["*"], [], {"name", "email"}),
        ([], ["email"], {"email"}),
        ([], ["name", "email"], {"name", "email"}),
    ],
)
def test_update_mask_resolution(paths: list[str], populated: list[str], fields: set[str]) -> None:
    assert domain.resolve_update_mask(paths, populated) == fields


@pytest.mark.parametrize(("paths", "populated"), [(["id"], []), (["name", "etag"], []), ([], [])])
def test_update_mask_rejects_what_cannot_change(paths: list[str], populated: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.resolve_update_mask(paths, populated)
    assert caught.value.violations[0].field == "update_mask"


def test_etag_changes_with_the_revision_only() -> None:
    now = datetime.now(UTC)
    user = domain.User(uuid.uuid4(), "a@b.io", "A", now, now, None, revision=1)
    same = domain.User(user.id, "other@b.io", "B", now, now, None, revision=1)
    later = domain.User(user.id, "a@b.io", "A", now, now, None, revision=2)
    assert user.etag == same.etag
    assert user.etag != later.etag
