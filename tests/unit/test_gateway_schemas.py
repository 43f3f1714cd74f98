"""The REST schemas document the users service's rules without checking them (the
service checks them all at once); and every problem has a code and a sentence-case title."""

from __future__ import annotations

import pytest

from gateway.problems import problem_document
from gateway.schemas import PasswordChange, UserCreate, UserUpdate
from users_service import domain


def test_the_documented_limits_are_the_users_services() -> None:
    expected = {
        "email": (1, domain.EMAIL_MAX),
        "name": (1, domain.NAME_MAX),
        "password": (domain.PASSWORD_MIN, domain.PASSWORD_MAX),
        "new_password": (domain.PASSWORD_MIN, domain.PASSWORD_MAX),
    }
    for model in (UserCreate, UserUpdate, PasswordChange):
        for field, schema in model.model_json_schema()["properties"].items():
            if field in expected:
                assert (schema["minLength"], schema["maxLength"]) == expected[field], field


def test_the_rules_are_left_to_the_service() -> None:
    # Only the shape is checked here: a short password and a long name pass through.
    UserCreate.model_validate({"email": "x", "name": "n" * 500, "password": "p"})
    PasswordChange.model_validate({"current_password": "", "new_password": "p"})


@pytest.mark.parametrize(
    ("status", "code", "title"),
    [
        (404, "NOT_FOUND", "Not found"),
        (405, "UNIMPLEMENTED", "Method not allowed"),
        (408, "DEADLINE_EXCEEDED", "Request timeout"),
        (412, "FAILED_PRECONDITION", "Precondition failed"),
        (413, "RESOURCE_EXHAUSTED", "Content too large"),
        (414, "RESOURCE_EXHAUSTED", "URI too long"),
        (415, "INVALID_ARGUMENT", "Unsupported media type"),
        (422, "FAILED_PRECONDITION", "Unprocessable content"),
        (431, "RESOURCE_EXHAUSTED", "Request header fields too large"),
        (503, "UNAVAILABLE", "Unavailable"),
    ],
)
def test_an_error_that_reached_no_service_has_a_code_and_one_title_style(
    status: int, code: str, title: str
) -> None:
    document = problem_document(status, "why", "req-1")
    assert (document["code"], document["title"]) == (code, title)
