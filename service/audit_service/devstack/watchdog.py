"""Stops a server when the process that started it dies, however it dies (SIGKILL included).

Run as `python -I -S watchdog.py PID SIGNAL GRACE START_TIME` with the read end of a pipe as stdin: the process
that started server PID holds the only write end, so when that process is gone (exit, crash, kill -9) the read
ends with EOF. The watchdog then sends SIGNAL to PID (SIGINT: a fast shutdown for PostgreSQL) and, when PID is
still there after GRACE seconds, SIGKILL. START_TIME (field 22 of /proc/PID/stat, empty where there is no /proc)
tells PID apart from a later process that reused the number: nothing is signalled once the server is gone.

Standard library only, and no imports from its package: it runs as a plain script, started in milliseconds.
Unlike PR_SET_PDEATHSIG, a pipe belongs to the process, not to the thread that forked, and survives the server
changing user.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def process_start_time(pid: int) -> str | None:
    """The start time of a live (not zombie) process from /proc, "" where there is no /proc; None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        if not os.path.isdir("/proc/self"):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass
            return ""
        return None
    except (OSError, IndexError):
        return None
    state, start_time = fields[0], fields[19]
    return None if state in ("Z", "X") else start_time


def same_process(pid: int, start_time: str) -> bool:
    current = process_start_time(pid)
    return current is not None and (not start_time or not current or current == start_time)


def main(argv: list[str]) -> int:
    pid, signum, grace, start_time = int(argv[1]), int(argv[2]), float(argv[3]), argv[4]
    # In a session of its own it gets no terminal signals; ignore them anyway: only EOF on stdin counts.
    for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(ignored, signal.SIG_IGN)
    while os.read(0, 4096):
        pass
    if not same_process(pid, start_time):
        return 0  # stopped by its owner, as usual
    name = signal.Signals(signum).name
    print(f"watchdog: the owner of process {pid} is gone; sending it {name}", file=sys.stderr, flush=True)
    for sent, wait in ((signum, grace), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sent)
        except ProcessLookupError:
            return 0
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not same_process(pid, start_time):
                return 0
            time.sleep(0.05)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
