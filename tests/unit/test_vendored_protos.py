"""protos/google holds copies of Google's protos for imports only: they must be the
ones the pinned googleapis-common-protos wheel ships, whose code runs at run time."""

from __future__ import annotations

from pathlib import Path

import google.longrunning
import pytest

VENDORED = Path(__file__).resolve().parents[2] / "protos" / "google"
# The wheel's name of a file, where it differs from the name its descriptor declares.
WHEEL_NAMES = {"longrunning/operations.proto": "longrunning/operations_proto.proto"}


def _wheel_root() -> Path:
    return Path(next(iter(google.longrunning.__path__))).parent


@pytest.mark.parametrize(
    "name", sorted(p.relative_to(VENDORED).as_posix() for p in VENDORED.rglob("*.proto"))
)
def test_each_vendored_proto_is_the_pinned_wheels(name: str) -> None:
    shipped = _wheel_root() / WHEEL_NAMES.get(name, name)
    assert (VENDORED / name).read_bytes() == shipped.read_bytes(), (
        f"protos/google/{name} differs from googleapis-common-protos' {shipped.name}: copy it again"
    )


def test_the_vendored_set_is_what_operations_proto_needs() -> None:
    assert {p.relative_to(VENDORED).as_posix() for p in VENDORED.rglob("*.proto")} == {
        "longrunning/operations.proto",
        "api/annotations.proto",
        "api/client.proto",
        "api/field_behavior.proto",
        "api/http.proto",
        "api/launch_stage.proto",
        "rpc/status.proto",
    }
