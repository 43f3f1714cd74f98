"""Regenerate the Python code for the .proto files under protos/.

    python protos/generate.py            # write client/tandem_protos
    python protos/generate.py --check    # exit 1 if the committed code is stale

protoc names generated modules after the proto paths (`users.v1.users_pb2`); we
re-root them under one importable package, `tandem_protos`, so that no client has to
put the generated folder on sys.path by hand. It lives in client/, beside
`tandem_client`: the installable client package (client/pyproject.toml) ships both.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE = "tandem_protos"
OUTPUT = PROTO_ROOT.parent / "client" / PACKAGE
HEADER = '"""Generated from protos/ by protos/generate.py: do not edit."""\n'


# Google's protos, vendored for their imports only: their code is googleapis-common-protos'.
VENDORED = "google"


def proto_files() -> list[str]:
    return sorted(
        str(p.relative_to(PROTO_ROOT))
        for p in PROTO_ROOT.rglob("*.proto")
        if p.relative_to(PROTO_ROOT).parts[0] != VENDORED
    )


def _plugin(name: str) -> str:
    # The mypy-protobuf plugins are console scripts installed beside this interpreter.
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            sys.exit(f"{name} not found: install the dev dependencies (mypy-protobuf)")
        path = Path(found)
    return str(path)


def generate(out: Path) -> None:
    files = proto_files()
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        *files,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"protoc failed:\n{result.stderr}")
    roots = sorted({f.split("/")[0] for f in files})
    alternation = "|".join(re.escape(r) for r in roots)
    import_re = re.compile(rf"^(from|import) ({alternation})\.", re.MULTILINE)
    module_re = re.compile(rf"'({alternation})\.(\w+(?:\.\w+)*_pb2)'")
    for path in out.rglob("*.py*"):
        text = path.read_text()
        text = import_re.sub(rf"\1 {PACKAGE}.\2.", text)
        text = module_re.sub(rf"'{PACKAGE}.\1.\2'", text)
        path.write_text(text)
    for directory in [out, *(d for d in out.rglob("*") if d.is_dir())]:
        (directory / "__init__.py").write_text(HEADER)
    # PEP 561: type checkers read the .pyi stubs of an installed tandem_protos.
    (out / "py.typed").write_text("")


def _differences(left: Path, right: Path) -> list[str]:
    names = {p.relative_to(left).as_posix() for p in left.rglob("*") if p.is_file()} | {
        p.relative_to(right).as_posix() for p in right.rglob("*") if p.is_file()
    }
    names = {n for n in names if "__pycache__" not in n}
    return sorted(
        n
        for n in names
        if not (left / n).is_file()
        or not (right / n).is_file()
        or not filecmp.cmp(left / n, right / n, shallow=False)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / PACKAGE
        fresh.mkdir()
        generate(fresh)
        stale = _differences(fresh, OUTPUT)
        if args.check:
            if stale:
                print(
                    "generated code is stale; run `make protos`:\n  " + "\n  ".join(stale),
                    file=sys.stderr,
                )
                return 1
            return 0
        shutil.rmtree(OUTPUT, ignore_errors=True)
        shutil.copytree(fresh, OUTPUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
