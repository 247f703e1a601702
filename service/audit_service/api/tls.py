"""TLS of the gRPC API: server credentials that serve renewed certificate files from the next handshake on.

gRPC asks `CertificateFiles.fetch` for a configuration before each TLS handshake (grpc's dynamic server
credentials); it compares the files' stat (cheap) and reloads them only when one changed. Open connections keep
the session they negotiated, so a renewal closes nothing. A half-written renewal (a certificate whose key is not
there yet) is not served: the previous pair stays until the files agree again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..config import TlsConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)

CERT_VARIABLE = "AUDIT_GRPC_TLS_CERT_FILE"
KEY_VARIABLE = "AUDIT_GRPC_TLS_KEY_FILE"
CLIENT_CA_VARIABLE = "AUDIT_GRPC_TLS_CLIENT_CA_FILE"

_Stamp = tuple[int, int, int, int]
"""What says a file changed: inode (a renamed-over file), device, size and mtime in ns."""


@dataclass(frozen=True, slots=True)
class CertificatePair:
    """The PEM contents of one consistent set of files, checked."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    not_valid_after: str
    """Expiry of the leaf certificate, for the log."""

    @property
    def expired(self) -> bool:
        return dt.datetime.fromisoformat(self.not_valid_after) <= dt.datetime.now(dt.UTC)


def _stamp(path: str) -> _Stamp:
    status = os.stat(path)
    return (status.st_ino, status.st_dev, status.st_size, status.st_mtime_ns)


def _read(path: str, variable: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ConfigError(variable, f"cannot read {path!r}: {error.strerror}") from None


def check_pair(cert_chain: bytes, private_key: bytes, client_ca: bytes | None) -> str:
    """Checks that the PEM texts are a certificate chain, its unencrypted private key and CA certificates.

    Returns:
        the leaf certificate's expiry (ISO 8601).

    Raises:
        ConfigError: naming the variable of the file at fault.
    """
    try:
        certificates = x509.load_pem_x509_certificates(cert_chain)
    except ValueError:
        raise ConfigError(CERT_VARIABLE, "holds no PEM certificate") from None
    if cert_chain.count(b"-----BEGIN") != len(certificates):  # cryptography skips a block cut short
        raise ConfigError(CERT_VARIABLE, "holds a PEM block that is not a whole certificate (a truncated file?)")
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except TypeError:
        raise ConfigError(KEY_VARIABLE, "is encrypted; give the key without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ConfigError(KEY_VARIABLE, f"holds no usable PEM private key ({error})") from None
    public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != certificates[0].public_key().public_bytes(*public):
        raise ConfigError(KEY_VARIABLE, f"does not match the (first) certificate of {CERT_VARIABLE}")
    if client_ca is not None:
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise ConfigError(CLIENT_CA_VARIABLE, "holds no PEM certificate") from None
    return certificates[0].not_valid_after_utc.isoformat()


class CertificateFiles:
    """The certificate, key and client CA files of the API, read again when they change.

    Raises (constructor):
        ConfigError: the files cannot be read or do not fit together (one line naming the variable).
    """

    def __init__(self, config: TlsConfig, label: str = "gRPC TLS") -> None:
        self._config = config
        self._label = label
        self._stamps = self._current_stamps()
        self._refused: list[_Stamp] | None = None
        self.current = self._load()
        log.info(
            "%s: serving %s (valid until %s)%s",
            label,
            config.cert_file,
            self.current.not_valid_after,
            ", client certificates required" if config.client_ca_file else "",
        )
        if self.current.expired:
            log.warning(
                "%s: %s expired at %s: clients will refuse it", label, config.cert_file, self.current.not_valid_after
            )

    @property
    def _paths(self) -> list[tuple[str, str]]:
        paths = [(self._config.cert_file, CERT_VARIABLE), (self._config.key_file, KEY_VARIABLE)]
        if self._config.client_ca_file:
            paths.append((self._config.client_ca_file, CLIENT_CA_VARIABLE))
        return paths

    def _current_stamps(self) -> list[_Stamp]:
        try:
            return [_stamp(path) for path, _ in self._paths]
        except OSError as error:
            raise ConfigError(
                next(variable for path, variable in self._paths if path == error.filename),
                f"cannot read {error.filename!r}: {error.strerror}",
            ) from None

    def _load(self) -> CertificatePair:
        cert_chain = _read(self._config.cert_file, CERT_VARIABLE)
        private_key = _read(self._config.key_file, KEY_VARIABLE)
        client_ca = _read(self._config.client_ca_file, CLIENT_CA_VARIABLE) if self._config.client_ca_file else None
        expiry = check_pair(cert_chain, private_key, client_ca)
        return CertificatePair(cert_chain, private_key, client_ca, expiry)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """gRPC's form of the current files."""
        return grpc.ssl_server_certificate_configuration(
            [(self.current.private_key, self.current.cert_chain)], root_certificates=self.current.client_ca
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration when the files changed, else None (keep the
        current one). Never raises: files being replaced are tried again when they change again."""
        try:
            stamps = self._current_stamps()
        except ConfigError as error:  # a file is being replaced (removed, then renamed into place)
            log.debug("%s: keeping the certificate in use: %s", self._label, error)
            return None
        if stamps in (self._stamps, self._refused):
            return None
        try:
            loaded = self._load()
        except ConfigError as error:
            self._refused = stamps  # one warning per inconsistent state, not one per handshake
            log.warning("%s: keeping the certificate in use: %s", self._label, error)
            return None
        except Exception:  # a fetcher that raises fails the handshake; never let it
            self._refused = stamps
            log.exception("%s: keeping the certificate in use", self._label)
            return None
        if loaded.expired and not self.current.expired:  # an old backup put back: not a renewal
            self._refused = stamps
            log.warning(
                "%s: keeping the certificate in use: %s expired at %s",
                self._label,
                self._config.cert_file,
                loaded.not_valid_after,
            )
            return None
        self._stamps, self._refused = stamps, None
        if loaded == self.current:
            return None  # touched, not changed
        self.current = loaded
        log.info(
            "%s: serving the renewed %s (valid until %s)", self._label, self._config.cert_file, loaded.not_valid_after
        )
        return self.configuration()

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for `add_secure_port` that follow the files."""
        return grpc.dynamic_ssl_server_credentials(
            self.configuration(),
            self.fetch,
            require_client_authentication=bool(self._config.client_ca_file),
        )
