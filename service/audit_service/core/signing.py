"""Ed25519 signatures of checkpoints and archive manifests. Pure apart from reading key files.

A key is named by its key id: the first 16 hex digits of the SHA-256 of its raw 32-byte public key, so a
verifier holding several public keys (after a rotation) knows which one a signature claims.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Signer:
    private_key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id(self.private_key.public_key())

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.private_key.public_key())

    def sign(self, statement: bytes) -> bytes:
        return self.private_key.sign(statement)


@dataclass(frozen=True, slots=True)
class Verifier:
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def verify(self, statement: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, statement)
        except InvalidSignature:
            return False
        return True


def load_signer(path: str, variable: str = "AUDIT_CHECKPOINT_SIGNING_KEY_FILE") -> Signer:
    """The Ed25519 private key of a PEM file; ConfigError (one line, naming the variable) otherwise."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(variable, f"cannot read an unencrypted PEM private key from {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(variable, f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return Signer(key)


def load_verifier(path: str, variable: str = "AUDIT_CHECKPOINT_VERIFY_KEY_FILE") -> Verifier:
    """The Ed25519 public key of a PEM file (or the public half of a private key file)."""
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        return load_signer(path, variable).verifier
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(variable, f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return Verifier(key)


def generate_private_key_pem() -> bytes:
    """A new Ed25519 private key as unencrypted PKCS#8 PEM (for `audit-service dev` and tests)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
