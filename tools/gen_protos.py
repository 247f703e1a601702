"""Generate the Python stubs of proto/ into client/audit/ (one command, reproducible): protobuf messages, gRPC
stubs and servicers, and Connect clients and ASGI applications (*_connect.py, by protoc-gen-connectrpc for
google.protobuf messages; importing them needs the `connectrpc` runtime, which the service installs and the client
distribution does not require).

Usage:
    python tools/gen_protos.py          # write the stubs
    python tools/gen_protos.py --check  # fail if the committed stubs differ from proto/
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT_ROOT = ROOT / "client"
GENERATED_PACKAGE = Path("audit") / "v1"
CONNECT_PLUGIN = "protoc-gen-connectrpc"
PACKAGE_INIT = '"""Generated protobuf and gRPC stubs of proto/audit/v1 (tools/gen_protos.py)."""\n'


def connect_plugin() -> str:
    """The Connect code generator of this environment (beside this Python first: a venv need not be activated)."""
    beside = Path(sys.executable).parent / CONNECT_PLUGIN
    found = str(beside) if beside.is_file() else shutil.which(CONNECT_PLUGIN)
    if found is None:
        raise SystemExit(f"{CONNECT_PLUGIN} not found: pip install -e '.[dev]'")
    return found


def generate(output_root: Path) -> list[Path]:
    """Runs protoc over proto/ into output_root and returns the generated files, relative to it."""
    proto_files = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = str(files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--grpc_python_out={output_root}",
        f"--plugin=protoc-gen-connectrpc={connect_plugin()}",
        f"--connectrpc_out={output_root}",
        "--connectrpc_opt=protobuf=google",
        *proto_files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in (output_root / "audit", output_root / GENERATED_PACKAGE):
        (package / "__init__.py").write_text(PACKAGE_INIT)
    return sorted(p.relative_to(output_root) for p in (output_root / "audit").rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the stubs are up to date")
    args = parser.parse_args()
    if not args.check:
        generated = generate(OUTPUT_ROOT)
        print(f"generated {len(generated)} files under {OUTPUT_ROOT / 'audit'}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        expected = {p for p in generate(Path(scratch)) if "__pycache__" not in p.parts}
        committed = {
            p.relative_to(OUTPUT_ROOT)
            for p in (OUTPUT_ROOT / "audit").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        stale = sorted(
            str(p)
            for p in expected | committed
            if p not in expected
            or p not in committed
            or not filecmp.cmp(Path(scratch) / p, OUTPUT_ROOT / p, shallow=False)
        )
    if stale:
        print("generated stubs are out of date with proto/: " + ", ".join(stale), file=sys.stderr)
        print("run: python tools/gen_protos.py", file=sys.stderr)
        return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
