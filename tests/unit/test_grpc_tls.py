"""CertificateFiles, the fetcher behind the API's dynamic TLS credentials: what it serves as files change."""

from __future__ import annotations

import os
import shutil

import pytest
from audit_service.api.tls import CertificateFiles
from audit_service.config import TlsConfig
from audit_service.errors import ConfigError

from ..certificates import CertificateAuthority


@pytest.fixture
def files(tmp_path):
    authority = CertificateAuthority(tmp_path / "pki", "unit")
    first, second = authority.issue("first", server=True), authority.issue("second", server=True)
    served = TlsConfig(cert_file=str(tmp_path / "tls.crt"), key_file=str(tmp_path / "tls.key"))
    shutil.copy(first.cert, served.cert_file)
    shutil.copy(first.key, served.key_file)
    return served, first, second


def put(source, target: str) -> None:
    staging = f"{target}.new"
    shutil.copy(source, staging)
    os.replace(staging, target)


def test_unchanged_files_keep_the_configuration_and_renewed_ones_replace_it(files) -> None:
    served, first, second = files
    certificates = CertificateFiles(served)
    assert certificates.current.cert_chain == first.cert.read_bytes()
    assert certificates.fetch() is None

    os.utime(served.cert_file)  # touched, same contents
    assert certificates.fetch() is None

    put(second.key, served.key_file)  # half-way through a renewal: the key no longer matches the certificate
    assert certificates.fetch() is None
    assert certificates.current.cert_chain == first.cert.read_bytes()
    assert certificates.fetch() is None  # and stays so, without reading the files again

    put(second.cert, served.cert_file)
    assert certificates.fetch() is not None
    assert certificates.current.cert_chain == second.cert.read_bytes()
    assert certificates.current.private_key == second.key.read_bytes()
    assert certificates.fetch() is None


def test_a_file_missing_for_a_moment_keeps_the_configuration(files) -> None:
    served, first, _ = files
    certificates = CertificateFiles(served)
    os.remove(served.cert_file)
    assert certificates.fetch() is None
    assert certificates.current.cert_chain == first.cert.read_bytes()


def test_mismatched_files_at_start_name_the_key_variable(files) -> None:
    served, _, second = files
    put(second.key, served.key_file)
    with pytest.raises(ConfigError) as raised:
        CertificateFiles(served)
    assert raised.value.setting == "AUDIT_GRPC_TLS_KEY_FILE"


NOT_KEYS = [b"", b"not a key\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]


@pytest.mark.parametrize("key", NOT_KEYS)
def test_a_key_file_that_is_not_a_key_names_the_key_variable_at_start(files, key: bytes) -> None:
    """Before: the except clause named x509.UnsupportedGeneratorError, which does not exist, so a bad key file
    was an AttributeError traceback at start-up instead of a configuration error."""
    served, _, _ = files
    with open(served.key_file, "wb") as file:
        file.write(key)
    with pytest.raises(ConfigError) as raised:
        CertificateFiles(served)
    assert raised.value.setting == "AUDIT_GRPC_TLS_KEY_FILE"


def test_a_renewal_with_a_bad_key_keeps_the_configuration_with_one_warning(files, caplog) -> None:
    served, first, second = files
    certificates = CertificateFiles(served)
    put(second.cert, served.cert_file)
    with open(f"{served.key_file}.new", "wb") as file:
        file.write(b"-----BEGIN PRIVATE KEY-----\n")  # a renewal written half-way
    os.replace(f"{served.key_file}.new", served.key_file)
    with caplog.at_level("DEBUG", logger="audit_service.api.tls"):
        assert certificates.fetch() is None
        assert certificates.fetch() is None  # the next handshake does not log again
    assert certificates.current.cert_chain == first.cert.read_bytes()
    problems = [record for record in caplog.records if record.levelname in ("WARNING", "ERROR")]
    assert len(problems) == 1 and problems[0].levelname == "WARNING" and not problems[0].exc_info, problems
    assert "AUDIT_GRPC_TLS_KEY_FILE" in problems[0].getMessage()


def test_a_chain_whose_last_certificate_is_cut_short_is_not_served(files, tmp_path) -> None:
    """A renewal copied in place and read half-way: the leaf is whole, the intermediate after it is not. cryptography
    parses the whole blocks and skips the cut one; serving it would send clients an incomplete chain."""
    served, first, second = files
    certificates = CertificateFiles(served)
    put(second.key, served.key_file)
    truncated = tmp_path / "truncated.pem"
    truncated.write_bytes(second.cert.read_bytes() + first.cert.read_bytes()[:200])
    put(truncated, served.cert_file)
    assert certificates.fetch() is None
    assert certificates.current.cert_chain == first.cert.read_bytes()
    put(second.cert, served.cert_file)  # the renewal completed
    assert certificates.fetch() is not None


def test_an_expired_certificate_put_in_place_of_a_valid_one_is_not_served(files, tmp_path, caplog) -> None:
    """An old backup restored, a renewal job that copied the wrong file: before, it was served ("serving the
    renewed ... valid until <yesterday>") and every new client refused the handshake."""
    served, first, _ = files
    certificates = CertificateFiles(served)
    old = CertificateAuthority(tmp_path / "old", "old").issue("api", server=True, expired=True)
    put(old.key, served.key_file)
    put(old.cert, served.cert_file)
    with caplog.at_level("WARNING", logger="audit_service.api.tls"):
        assert certificates.fetch() is None
        assert certificates.fetch() is None
    assert certificates.current.cert_chain == first.cert.read_bytes()
    assert [record.getMessage() for record in caplog.records if "expired" in record.getMessage()] != []
    assert len(caplog.records) == 1


def test_an_expired_certificate_at_start_is_served_with_a_warning(tmp_path, caplog) -> None:
    old = CertificateAuthority(tmp_path / "old", "old").issue("api", server=True, expired=True)
    with caplog.at_level("WARNING", logger="audit_service.api.tls"):
        certificates = CertificateFiles(TlsConfig(cert_file=str(old.cert), key_file=str(old.key)))
    assert certificates.current.expired
    assert any("expired" in record.getMessage() for record in caplog.records)
