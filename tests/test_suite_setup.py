"""The test suite's own setup: the README's commands, the Hypothesis profile of tests/conftest.py, and property
tests that pass from a clean clone, whatever the machine's load."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from hypothesis import HealthCheck, settings

from .conftest import REPO_ROOT


def test_the_suite_profile_is_active() -> None:
    active = settings()
    assert active.deadline is None
    assert HealthCheck.too_slow in active.suppress_health_check
    assert active.derandomize == bool(os.environ.get("CI"))


def test_property_tests_pass_with_a_cold_hypothesis_cache(tmp_path) -> None:
    # A clean clone has no .hypothesis/: the first example of the first property test then waits for Hypothesis
    # to scan the project's modules for constants and to build its Unicode tables (1-3 s on 2 busy cores), which
    # the too_slow health check used to count as input generation.
    env = {key: value for key, value in os.environ.items() if key != "CI"}  # CI would pick Hypothesis' "ci" profile
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(tmp_path / "hypothesis")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_diff.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert (tmp_path / "hypothesis" / "constants").is_dir(), "the run started from an empty cache"


def test_ci_runs_the_readmes_test_command_which_installs_the_client_in_the_same_pip_call():
    readme = (REPO_ROOT / "README.md").read_text()
    command_b = re.search(r"# \(b\) [^\n]*\n(?:# [^\n]*\n)*([^\n]+)\n", readme).group(1)
    command_a = re.search(r"# \(a\) [^\n]*\n([^\n]+)\n", readme).group(1)
    assert command_b in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    install = "python3.11 -m venv .venv && .venv/bin/pip install -q -e ./client -e '.[dev]' && "
    debian = (
        "(dpkg -s postgresql rsyslog rsyslog-openssl chromium >/dev/null 2>&1 || "
        "(apt-get update -q && apt-get install -y -q postgresql rsyslog rsyslog-openssl chromium)) && "
    )
    assert command_a.startswith(install) and command_b.startswith(debian + install)
