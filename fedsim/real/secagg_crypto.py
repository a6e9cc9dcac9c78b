"""The cryptography secure aggregation runs on: X25519, HKDF-SHA256 and AES-256-GCM.

:class:`X25519Crypto` implements :class:`fedsim.core.secagg.SecAggCrypto` with the
``cryptography`` package, which the pure core may not import. A key agreement's raw X25519
output goes through HKDF (RFC 5869) before any use, as RFC 7748 section 6.1 advises; each
ciphertext carries its random 12-byte nonce in front.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_RAW = serialization.Encoding.Raw
_NONCE = 12


class X25519Crypto:
    """Key pairs and agreements over Curve25519, encryption with AES-GCM."""

    def keypair(self) -> tuple[bytes, bytes]:
        key = X25519PrivateKey.generate()
        secret = key.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return secret, key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    def agree(self, secret: bytes, public: bytes) -> bytes:
        try:
            shared = X25519PrivateKey.from_private_bytes(secret).exchange(
                X25519PublicKey.from_public_bytes(public)
            )
        except ValueError as exc:
            raise ValueError(f"secagg key agreement failed: {exc}") from None
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedsim-secagg")
        return kdf.derive(shared)

    def encrypt(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)

    def decrypt(self, key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return AESGCM(key).decrypt(ciphertext[:_NONCE], ciphertext[_NONCE:], aad)
        except InvalidTag:
            raise ValueError(
                "secagg share does not authenticate (altered or misaddressed)"
            ) from None
