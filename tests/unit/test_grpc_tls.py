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
