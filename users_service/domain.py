"""The users service's rules: what an account is and which values it accepts."""

from __future__ import annotations

import contextlib
import hashlib
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from email_validator import EmailNotValidError, validate_email

from servicekit.errors import InvalidArgument, Violations, empty_text

NAME_MAX = 100
PASSWORD_MIN = 8
PASSWORD_MAX = 128
EMAIL_MAX = 254
# Ids one BatchGetUsers may ask for (AIP-231 leaves the limit to the API).
BATCH_GET_MAX = 1000
UPDATABLE_FIELDS = frozenset({"name", "email"})
# The reason of every refused login and client-credentials grant, whichever part was
# wrong, so that a caller cannot tell an unknown name from a wrong secret.
BAD_CREDENTIALS = "BAD_CREDENTIALS"


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    email: str
    name: str
    create_time: datetime
    update_time: datetime
    delete_time: datetime | None
    revision: int
    role: str = "user"

    @property
    def etag(self) -> str:
        """Changes whenever the account changes (AIP-154); opaque to clients."""
        digest = hashlib.blake2b(f"{self.id}:{self.revision}".encode(), digest_size=8)
        return digest.hexdigest()


def parse_ids(raw: Sequence[str], *, field: str = "ids") -> list[uuid.UUID]:
    """The ids of a batch request, every malformed one named by its index."""
    violations = Violations()
    if not raw:
        violations.add(field, "must name at least one id")
    elif len(raw) > BATCH_GET_MAX:
        violations.add(field, f"must name at most {BATCH_GET_MAX} ids")
    parsed: list[uuid.UUID] = []
    for index, value in enumerate(raw[:BATCH_GET_MAX]):
        try:
            parsed.append(uuid.UUID(value))
        except ValueError:
            violations.add(f"{field}[{index}]", "must be a UUID")
    violations.check()
    return parsed


def normalize_email(raw: str, field: str, violations: Violations) -> str:
    """The address trimmed and normalised (domain lower-cased, Unicode NFC)."""
    email = raw.strip()
    if not email:
        violations.add(field, empty_text(raw))
        return email
    if len(email) > EMAIL_MAX:
        violations.add(field, f"must be at most {EMAIL_MAX} characters")
        return email
    try:
        return validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        violations.add(field, f"is not a valid email address: {exc}")
        return email


def email_key(email: str) -> str:
    """What two addresses must share to count as the same account."""
    return email.casefold()


def login_key(raw: str) -> str:
    """The email key a login looks up; never fails, so bad input costs a normal check."""
    email = raw.strip()
    with contextlib.suppress(EmailNotValidError):
        email = validate_email(email, check_deliverability=False).normalized
    return email_key(email)


def normalize_name(raw: str, field: str, violations: Violations) -> str:
    name = raw.strip()
    if not name:
        violations.add(field, empty_text(raw))
    elif len(name) > NAME_MAX:
        violations.add(field, f"must be at most {NAME_MAX} characters")
    elif _has_control_characters(name):
        violations.add(field, "must not contain control characters")
    return name


def check_password(raw: str, field: str, violations: Violations) -> str:
    if len(raw) < PASSWORD_MIN:
        violations.add(field, f"must be at least {PASSWORD_MIN} characters")
    elif len(raw) > PASSWORD_MAX:
        violations.add(field, f"must be at most {PASSWORD_MAX} characters")
    elif "\x00" in raw:
        violations.add(field, "must not contain NUL characters")
    return raw


def resolve_update_mask(paths: Iterable[str], populated: Iterable[str]) -> frozenset[str]:
    """The fields an UpdateUser changes (AIP-134).

    No mask means every populated updatable field; `*` means all updatable fields.
    """
    requested = list(paths)
    if not requested:
        chosen = frozenset(populated) & UPDATABLE_FIELDS
        if not chosen:
            raise InvalidArgument.field("update_mask", "names no field to update")
        return chosen
    if requested == ["*"]:
        return UPDATABLE_FIELDS
    unknown = sorted(set(requested) - UPDATABLE_FIELDS)
    if unknown:
        raise InvalidArgument.field(
            "update_mask",
            f"cannot update {', '.join(unknown)}: only {', '.join(sorted(UPDATABLE_FIELDS))}",
        )
    return frozenset(requested)


def _has_control_characters(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)
