"""The client distribution (client/pyproject.toml): what producers install is the stubs and audit_client, with
five dependencies and nothing of the service."""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import REPO_ROOT

CLIENT_DEPENDENCIES = ["grpcio", "nats-py", "opentelemetry-api", "protobuf", "uuid-utils"]


def client_source(destination: Path) -> Path:
    """A copy of the repository's client/ without what local builds left there, so the checkout stays clean."""
    return Path(
        shutil.copytree(
            REPO_ROOT / "client", destination, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        )
    )


def test_the_client_wheel_holds_the_stubs_and_audit_client_and_depends_on_five_packages(tmp_path):
    source = client_source(tmp_path / "client")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("audit_log_service_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.parser.Parser().parsestr(
            archive.read(next(name for name in names if name.endswith(".dist-info/METADATA"))).decode()
        )
    requirements = metadata.get_all("Requires-Dist") or []
    assert sorted(re.split(r"[ <>=!~\[;]", requirement, maxsplit=1)[0] for requirement in requirements) == (
        CLIENT_DEPENDENCIES
    )
    packaged = {name for name in names if ".dist-info/" not in name}
    assert {name.split("/")[0] for name in packaged} == {"audit", "audit_client"}, "nothing of the service"
    sources = {
        str(path.relative_to(REPO_ROOT / "client"))
        for package in ("audit", "audit_client")
        for path in (REPO_ROOT / "client" / package).rglob("*")
        if path.is_file() and path.suffix in (".py", ".pyi", ".typed")
    }
    assert packaged == sources, "every module and stub of the client, and only those"
    assert metadata["Name"] == "audit-log-service-client"


def test_the_service_takes_the_client_from_its_distribution_at_the_same_version():
    import tomllib

    client = tomllib.loads((REPO_ROOT / "client" / "pyproject.toml").read_text())["project"]
    service = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert f"{client['name']}=={client['version']}" in service["project"]["dependencies"]
    assert service["tool"]["setuptools"]["packages"]["find"]["where"] == ["service"]
