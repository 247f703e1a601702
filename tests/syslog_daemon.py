"""A real rsyslog receiving syslog over TLS (RFC 5425), for the syslog destination's tests.

rsyslogd (Debian's rsyslog with rsyslog-openssl, installed by the README's test command) runs in the
foreground with its own configuration, work directory and pid file under the test's tmp directory: imtcp with
the OpenSSL stream driver in TLS-only mode (StreamDriver.Mode 1, AuthMode anon: clients are not
authenticated, the server is), on a free loopback port, and two files written from what it parsed:
raw.log (each message as received, %rawmsg%) and fields.log (PRI|TIMESTAMP|HOSTNAME|APP-NAME|PROCID|MSGID|
STRUCTURED-DATA|MSG, one message a line). rsyslog's own messages go to internal.log, for diagnosis.
A missing rsyslogd fails the test, it does not skip it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from audit_service.devstack.processes import free_port, port_is_open

from .certificates import CertificateAuthority

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def rsyslogd_binary(search_path: str = SEARCH_PATH) -> str:
    """The rsyslogd executable; fails the test when there is none."""
    binary = shutil.which("rsyslogd", path=search_path)
    if binary is None:
        pytest.fail(
            "rsyslogd is not installed: the syslog destination is tested against a real rsyslog. Install Debian's "
            "rsyslog and rsyslog-openssl (the README's test command does: apt-get install rsyslog rsyslog-openssl)"
        )
    return binary


CONFIG = """\
global(
  workDirectory="{work}"
  maxMessageSize="64k"
  defaultNetstreamDriver="ossl"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
)
module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="received")

template(name="raw" type="string" string="%rawmsg%\\n")
template(name="fields" type="string"
         string="%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\\n")

ruleset(name="received") {{
  action(type="omfile" file="{directory}/raw.log" template="raw")
  action(type="omfile" file="{directory}/fields.log" template="fields")
}}
action(type="omfile" file="{directory}/internal.log")
"""


class RsyslogDaemon:
    """rsyslogd on 127.0.0.1:port with a certificate for localhost and 127.0.0.1 from its own CA."""

    def __init__(self, directory: Path) -> None:
        self.binary = rsyslogd_binary()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "work").mkdir(exist_ok=True)
        self.authority = CertificateAuthority(directory / "pki", "syslog")
        issued = self.authority.issue("rsyslog", server=True)
        self.ca_pem = self.authority.cert.read_text()
        self.port = free_port()
        self.config = directory / "rsyslog.conf"
        self.config.write_text(
            CONFIG.format(
                work=directory / "work",
                ca=self.authority.cert,
                cert=issued.cert,
                key=issued.key,
                port=self.port,
                directory=directory,
            )
        )
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Starts rsyslogd and returns once its port accepts connections."""
        assert self._process is None
        output = open(self.directory / f"rsyslogd-{self.starts}.out", "wb")  # noqa: SIM115 (the process keeps it)
        self._process = subprocess.Popen(
            [self.binary, "-n", "-f", str(self.config), "-i", str(self.directory / "rsyslogd.pid")],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output.close()
        self.starts += 1
        deadline = time.monotonic() + 60
        while not port_is_open("127.0.0.1", self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                logs = "\n".join(p.read_text() for p in sorted(self.directory.glob("rsyslogd-*.out")))
                pytest.fail(f"rsyslogd did not start listening on {self.port}:\n{logs}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stops rsyslogd (SIGTERM: it writes out what it holds first) and waits for it to exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def lines(self, name: str) -> list[bytes]:
        """The lines written so far to raw.log or fields.log."""
        path = self.directory / name
        return path.read_bytes().splitlines() if path.exists() else []

    def wait_for_lines(self, name: str, count: int, timeout: float = 60) -> list[bytes]:
        """The lines of name once there are at least count of them (fails after timeout seconds)."""
        deadline = time.monotonic() + timeout
        while len(lines := self.lines(name)) < count:
            if time.monotonic() > deadline:
                internal = self.directory / "internal.log"
                pytest.fail(
                    f"{name} has {len(lines)} of {count} lines; rsyslog said:\n"
                    + (internal.read_text(errors="replace")[-3000:] if internal.exists() else "(nothing)")
                )
            time.sleep(0.05)
        return lines
