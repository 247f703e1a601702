"""NATS connections of producers and of the service: each user's own inboxes, and refused credentials fail fast.

With the service's NATS permissions (README, "NATS permissions") a user may subscribe only to its own inboxes,
`_INBOX.<user>.>`: whoever could subscribe to `_INBOX.>` would read every other client's replies, including the
deliveries of every tenant's events to the ingest workers. So a connection whose URL names a user and a password
(`nats://user:password@host:4222`) takes `_INBOX.<user>` as its inbox prefix.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client as NatsClient

DEFAULT_INBOX_PREFIX = "_INBOX"
USER_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
"""NATS user names the service's permissions are written for: one subject token each (inbox `_INBOX.<user>`)."""

_nats_log = logging.getLogger("nats.aio.client")


def url_user(servers: str | list[str]) -> str | None:
    """The user named, with a password, by the first server URL that has credentials (a user alone is a token)."""
    urls = servers.split(",") if isinstance(servers, str) else servers
    for url in urls:
        parts = urlsplit(url.strip())
        if parts.password is not None and parts.username:
            return parts.username
    return None


def inbox_prefix(servers: str | list[str]) -> str:
    """`_INBOX.<user>` for a URL with a user and a password, else NATS's default `_INBOX`.

    Raises:
        ValueError: the user name is not one subject token (letters, digits, `_`, `-`).
    """
    user = url_user(servers)
    if user is None:
        return DEFAULT_INBOX_PREFIX
    if not USER_PATTERN.fullmatch(user):
        raise ValueError(f"NATS user {user!r} must match {USER_PATTERN.pattern} (it names the user's inboxes)")
    return f"{DEFAULT_INBOX_PREFIX}.{user}"


def redact(servers: str) -> str:
    """Comma-separated server URLs with their passwords replaced by `***`."""
    redacted = []
    for url in servers.split(","):
        parts = urlsplit(url.strip())
        if parts.password is not None:
            url = url.replace(f":{parts.password}@", ":***@", 1)
        redacted.append(url)
    return ",".join(redacted)


def tls_context(
    *, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """A client TLS context for NATS: verifies the server against `ca_file` (else the system's trusted CAs) and
    its host name, and presents `cert_file`/`key_file` when the server asks for a client certificate.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: a file is not PEM, or the key does not match the certificate.
        ValueError: a certificate without its key, or a key without its certificate.
    """
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs its key file, and a key file its certificate")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    if cert_file and key_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def _is_refusal(error: Exception) -> bool:
    return isinstance(error, nats.errors.AuthorizationError) or "authorization violation" in str(error).lower()


class _Refused(Exception):
    pass


async def connect_nats(
    servers: str | list[str],
    *,
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
    **options: Any,
) -> NatsClient:
    """`nats.connect`, with the inbox prefix of the URL's user (unless `inbox_prefix` is given), and failing at
    once when the server refuses the credentials: nats-py would try them again for minutes.

    Args:
        tls_ca_file, tls_cert_file, tls_key_file: PEM files of a TLS context made with `tls_context` (instead of
            passing `tls=ssl.SSLContext`).

    Raises:
        nats.errors.AuthorizationError: the server refused the user, password or token.
    """
    options.setdefault("inbox_prefix", inbox_prefix(servers))
    if tls_ca_file or tls_cert_file or tls_key_file:
        if options.get("tls") is not None:
            raise ValueError("pass either tls or the tls_*_file options, not both")
        options["tls"] = tls_context(ca_file=tls_ca_file, cert_file=tls_cert_file, key_file=tls_key_file)
    user_error_cb: Callable[[Exception], Awaitable[None]] | None = options.pop("error_cb", None)
    connecting = True

    async def error_cb(error: Exception) -> None:
        if connecting and _is_refusal(error):
            raise _Refused  # out of nats-py's connect loop, which awaits this callback
        if user_error_cb is not None:
            await user_error_cb(error)
        else:
            # One line: nats-py's own default logs a traceback for every failed reconnection attempt (every 2 s
            # while NATS is away), of its internals, which buries the cause.
            _nats_log.error("nats: %s: %s", type(error).__name__, error or "(no detail)")

    nc = NatsClient()
    try:
        await nc.connect(servers, error_cb=error_cb, **options)
    except _Refused:
        await nc.close()
        raise nats.errors.AuthorizationError from None
    connecting = False
    return nc
