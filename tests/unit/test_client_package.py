"""The client package installs on its own: its wheel, its dependencies, its imports."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT

CLIENT = ROOT / "client"
# Modules the client must not pull in: they are the services', not a client's.
FORBIDDEN = ("fastapi", "sqlalchemy", "anthropic", "pydantic", "servicekit", "gateway")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out)]
    # The venv's hatchling when installed (the dev extra), else pip fetches it.
    if importlib.util.find_spec("hatchling") is not None:
        command.append("--no-build-isolation")
    result = subprocess.run(
        [*command, str(CLIENT)], capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("tandem_client-0.1.0-*.whl")
    return built


def test_the_wheel_requires_grpcio_protobuf_and_grpcio_status_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(name).decode())
    assert metadata["Name"] == "tandem-client"
    assert metadata["Requires-Python"] == ">=3.11"
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    assert sorted(r.name for r in requires) == ["grpcio", "grpcio-status", "protobuf"]
    assert all(not r.extras and r.marker is None for r in requires)


def test_the_wheel_holds_the_client_and_the_generated_code(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"tandem_client", "tandem_protos"}
    for name in (
        "tandem_client/__init__.py",
        "tandem_client/connection.py",
        "tandem_client/py.typed",
        "tandem_protos/py.typed",
        "tandem_protos/users/v1/users_pb2.py",
        "tandem_protos/users/v1/users_pb2_grpc.pyi",
        "tandem_protos/ai/v1/analysis_pb2_grpc.py",
    ):
        assert name in names, name
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_client_dependencies_match_the_main_projects() -> None:
    import tomllib

    def ranges(path: Path) -> dict[str, str]:
        with path.open("rb") as f:
            project = tomllib.load(f)["project"]
        return {str(r.name): str(r.specifier) for r in map(Requirement, project["dependencies"])}

    client = ranges(CLIENT / "pyproject.toml")
    main = ranges(ROOT / "pyproject.toml")
    assert set(client) == {"grpcio", "protobuf", "grpcio-status"}
    assert client == {name: main[name] for name in client}


def test_importing_the_client_imports_no_service_code() -> None:
    probe = (
        "import sys, tandem_client, tandem_client.connection, tandem_client.tokens;"
        "from tandem_protos.users.v1 import users_pb2_grpc;"
        f"print(','.join(sorted(m for m in {FORBIDDEN!r} "
        "if any(k == m or k.startswith(m + '.') for k in sys.modules))))"
    )
    # Run from the client folder alone: the repository root is not on sys.path.
    result = subprocess.run(
        [sys.executable, "-I", "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        cwd=CLIENT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
