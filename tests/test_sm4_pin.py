"""The token request's PIN block: our SM4 (cryptography/OpenSSL) against the GB/T 32907
standard's own example and against an independent pure-Python SM4 (gmssl)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gmssl.sm4 import SM4_ENCRYPT, CryptSM4

from agent.uplink.sm4_pin import PinError, decrypt_pin, encrypt_pin, pin_block

SECRET = "A1b2C3d4E5f6G7h8-rest-of-working-key"
ENTERPRISE = "91370600780790663W"


def test_gbt_32907_example_block() -> None:
    """GB/T 32907-2016 appendix A.1: key = plaintext = 0123456789abcdeffedcba9876543210."""
    k = bytes.fromhex("0123456789abcdeffedcba9876543210")
    enc = Cipher(algorithms.SM4(k), modes.ECB()).encryptor()
    assert (enc.update(k) + enc.finalize()).hex() == "681edf34d206965e86b3e94f536e4246"
    ours = CryptSM4()
    ours.set_key(k, SM4_ENCRYPT)
    assert ours.crypt_ecb(k)[:16].hex() == "681edf34d206965e86b3e94f536e4246"  # gmssl agrees


def test_pin_block_layout() -> None:
    assert pin_block("abc123") == b"06abc123FFFFFFFF"
    assert pin_block("12345678901234") == b"1412345678901234"
    assert pin_block("x") == b"01xFFFFFFFFFFFFF"
    for bad in ("", "123456789012345", "pässwort", "a\nb"):
        with pytest.raises(PinError):
            pin_block(bad)


@pytest.mark.parametrize("pin", ["abc123", "x", "12345678901234", "Pa55-w0rd!"])
def test_pin_block_matches_an_independent_sm4(pin: str) -> None:
    ours = encrypt_pin(pin, SECRET, ENTERPRISE)
    assert len(ours) == 32 and ours == ours.lower()
    ref = CryptSM4()
    ref.set_key(SECRET[:16].encode(), SM4_ENCRYPT)
    # gmssl's CBC always appends a PKCS#7 block; the first cipher block depends only on the
    # IV and our one plaintext block, so it is the unpadded encryption the interface asks for.
    expected = ref.crypt_cbc(ENTERPRISE[:16].encode(), pin_block(pin))
    assert len(expected) == 32
    assert bytes.fromhex(ours) == expected[:16]
    assert decrypt_pin(ours, SECRET, ENTERPRISE) == pin


def test_key_and_iv_are_the_first_16_characters() -> None:
    a = encrypt_pin("abc123", SECRET, ENTERPRISE)
    assert encrypt_pin("abc123", SECRET[:16] + "different tail", ENTERPRISE[:16] + "ZZ") == a
    assert encrypt_pin("abc123", "B" + SECRET[1:], ENTERPRISE) != a
    assert encrypt_pin("abc123", SECRET, "8" + ENTERPRISE[1:]) != a
    with pytest.raises(PinError):
        encrypt_pin("abc123", "short", ENTERPRISE)
    with pytest.raises(PinError):
        decrypt_pin("00" * 16, SECRET, ENTERPRISE)  # not a PIN block once decrypted


def test_the_daemon_computes_it_in_a_child_process() -> None:
    """What the daemon runs (cryptography's cipher bindings stay out of its memory)."""
    from agent.uplink.sm4_pin import encrypt_pin_in_child

    assert encrypt_pin_in_child("abc123", SECRET, ENTERPRISE) == encrypt_pin("abc123", SECRET, ENTERPRISE)
    with pytest.raises(PinError, match="at most 14"):
        encrypt_pin_in_child("p" * 15, SECRET, ENTERPRISE)
