"""Secure aggregation's cryptography: X25519 agreement, HKDF, AES-GCM with the shares' labels."""

import pytest

from fedsim.real.secagg_crypto import X25519Crypto

CRYPTO = X25519Crypto()


def test_both_sides_agree_on_one_key_and_others_do_not():
    # Prepare
    (a_sk, a_pk), (b_sk, b_pk), (c_sk, _) = (CRYPTO.keypair() for _ in range(3))
    # Execute
    ab, ba, cb = CRYPTO.agree(a_sk, b_pk), CRYPTO.agree(b_sk, a_pk), CRYPTO.agree(c_sk, b_pk)
    # Assert
    assert ab == ba and len(ab) == 32 and cb != ab


def test_a_share_decrypts_only_with_its_key_and_label():
    # Prepare
    key = CRYPTO.agree(CRYPTO.keypair()[0], CRYPTO.keypair()[1])
    ct = CRYPTO.encrypt(key, b"share", b"1>2")
    # Execute / Assert
    assert CRYPTO.decrypt(key, ct, b"1>2") == b"share"
    with pytest.raises(ValueError, match="does not authenticate"):
        CRYPTO.decrypt(key, ct, b"1>3")  # readdressed by the server
    with pytest.raises(ValueError, match="does not authenticate"):
        CRYPTO.decrypt(key, ct[:-1] + bytes([ct[-1] ^ 1]), b"1>2")


def test_a_malformed_public_key_is_a_clear_error():
    with pytest.raises(ValueError, match="key agreement failed"):
        CRYPTO.agree(CRYPTO.keypair()[0], b"short")
