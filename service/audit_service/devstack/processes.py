"""Helpers shared by the embedded servers: free ports, readiness, file permissions."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_is_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, alive: Callable[[], bool]) -> None:
    """Polls `condition` until true; raises RuntimeError when `alive` turns false or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not alive():
            raise RuntimeError(f"{what} exited during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s")
        time.sleep(0.05)


def make_traversable(path: Path) -> None:
    """Lets other users traverse every parent of `path` (PostgreSQL refuses to run as root, so it runs as
    another user who must reach its data directory)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


def stop_process(process: subprocess.Popen[bytes], stop_signal: signal.Signals, timeout: float) -> None:
    """Sends `stop_signal` and waits; SIGKILL if the process is still there after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
