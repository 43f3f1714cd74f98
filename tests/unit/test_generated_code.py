from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_committed_generated_code_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_generated_code_imports_as_a_normal_package() -> None:
    from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
    from tandem_protos.users.v1 import users_pb2, users_pb2_grpc

    assert users_pb2.User.DESCRIPTOR.full_name == "users.v1.User"
    assert users_pb2_grpc.UsersServiceStub is not None
    assert analysis_pb2.Analysis.DESCRIPTOR.full_name == "ai.v1.Analysis"
    assert analysis_pb2_grpc.AnalysisServiceStub is not None


def test_generated_code_lives_in_the_client_package_with_its_type_marker() -> None:
    import tandem_protos

    package = ROOT / "client" / "tandem_protos"
    assert tandem_protos.__file__ is not None
    assert tandem_protos.__file__ == str(package / "__init__.py")
    assert (package / "py.typed").is_file()
    assert (ROOT / "client" / "tandem_client" / "py.typed").is_file()
    assert not (ROOT / "protos" / "python").exists()
