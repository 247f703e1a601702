"""Helpers shared by the embedded servers: free ports, readiness, file permissions, and what ties a server's
life to the process that started it (a data directory lock, a watchdog, the reaping of leftovers)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .watchdog import process_start_time

log = logging.getLogger(__name__)

WATCHDOG_SCRIPT = Path(__file__).with_name("watchdog.py")


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


class DataDirectoryLock:
    """An exclusive lock on a server's data directory (the file `<data_dir>.lock` beside it), held by the process
    that runs the server. The kernel releases it when that process dies, however it dies: a server found running
    on a directory whose lock is free was left behind by a dead owner."""

    def __init__(self, data_dir: Path, what: str) -> None:
        self.path = data_dir.parent / f"{data_dir.name}.lock"
        self._data_dir = data_dir
        self._what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RuntimeError(
                f"the {self._what} data directory {self._data_dir} is in use by another process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Lifeline:
    """Stops a server when this process dies, however it dies (kill -9 included): a watchdog process waits for
    the end of a pipe whose write end only this process holds (see watchdog.py)."""

    def __init__(self, pid: int, stop_signal: signal.Signals, grace_seconds: float, log_file: IO[bytes]) -> None:
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._write_end: int | None = None
        start_time = process_start_time(pid)
        if start_time is None:
            return  # already gone: nothing to watch
        read_end, write_end = os.pipe()  # neither end is inherited by other children (PEP 446)
        arguments = [str(pid), str(int(stop_signal)), str(grace_seconds), start_time]
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", str(WATCHDOG_SCRIPT), *arguments],
                stdin=read_end,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # no Ctrl-C from the terminal: only the pipe counts
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._write_end = write_end

    def release(self) -> None:
        """Ends the watchdog, once the server was stopped (it would stop the server otherwise)."""
        if self._write_end is not None:
            os.close(self._write_end)
            self._write_end = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None


def process_command(pid: int) -> list[str] | None:
    """The command line of a live process (None when gone, a zombie, or where there is no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] or None


def argument_after(command: list[str], option: str) -> str | None:
    with contextlib.suppress(ValueError, IndexError):
        return command[command.index(option) + 1]
    return None


def stop_leftover(
    pid_file: Path,
    is_ours: Callable[[list[str]], bool],
    stop_signal: signal.Signals,
    timeout: float,
    what: str,
) -> None:
    """Stops a server that a dead owner left running on this data directory (found by its pid file, and only if
    its command line says it is that server), and waits until it is gone."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    command = process_command(pid)
    start_time = process_start_time(pid)
    if command is None or start_time is None or not is_ours(command):
        return
    log.warning("stopping %s (pid %d), left running by a previous owner of its data directory", what, pid)
    for sent, wait in ((stop_signal, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sent)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            current = process_start_time(pid)
            if current is None or (start_time and current and current != start_time):
                return
            time.sleep(0.05)
    raise RuntimeError(f"{what} (pid {pid}), left running by a previous owner, does not stop")
