"""The password of the provincial interface's token request, as an SM4-CBC PIN block.

The rule (docs/province.md gives its public source): the password is written as two decimal
digits of its length followed by the password itself, padded with "F" to 16 characters, and
encrypted with SM4 in CBC mode without any padding scheme (the block is exactly 16 bytes).
The key is the first 16 characters of the working key (`secretKey`) the province issued for
the enterprise, the IV the first 16 characters of the enterprise code; what is sent is the
32 hex characters of the one cipher block.

cryptography's SM4 (OpenSSL) does the cipher: no new dependency.
"""

from __future__ import annotations

BLOCK = 16


class PinError(ValueError):
    """The password, working key or enterprise code cannot make a PIN block."""


def pin_block(pin: str) -> bytes:
    """"%02d" % len(pin) + pin, padded with "F" to 16 ASCII characters."""
    if not pin:
        raise PinError("the password is empty")
    if not pin.isascii() or not pin.isprintable():
        raise PinError("the password must be printable ASCII")
    text = f"{len(pin):02d}{pin}"
    if len(text) > BLOCK:
        raise PinError(f"the password has {len(pin)} characters; a PIN block holds at most {BLOCK - 2}")
    return text.ljust(BLOCK, "F").encode("ascii")


def encrypt_pin(pin: str, secret_key: str, enterprise_code: str) -> str:
    """The PIN block encrypted as the interface asks: 32 lowercase hex characters."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = _first16(secret_key, "working key (secretKey)")
    iv = _first16(enterprise_code, "enterprise code")
    enc = Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor()
    return (enc.update(pin_block(pin)) + enc.finalize()).hex()


def decrypt_pin(hex_block: str, secret_key: str, enterprise_code: str) -> str:
    """The password inside a PIN block (what the platform does; the HIL simulator uses it)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    try:
        data = bytes.fromhex(hex_block)
    except ValueError:
        raise PinError("the PIN block is not hex") from None
    if len(data) != BLOCK:
        raise PinError(f"the PIN block has {len(data)} bytes, expected {BLOCK}")
    key = _first16(secret_key, "working key (secretKey)")
    iv = _first16(enterprise_code, "enterprise code")
    dec = Cipher(algorithms.SM4(key), modes.CBC(iv)).decryptor()
    text = (dec.update(data) + dec.finalize()).decode("ascii", errors="replace")
    if not text[:2].isdigit() or int(text[:2]) > BLOCK - 2:
        raise PinError("the PIN block does not start with a length")
    n = int(text[:2])
    if text[2 + n:] != "F" * (BLOCK - 2 - n):
        raise PinError("the PIN block is not padded with F")
    return text[2:2 + n]


def _first16(text: str, what: str) -> bytes:
    if len(text) < BLOCK or not text[:BLOCK].isascii():
        raise PinError(f"the {what} needs at least {BLOCK} ASCII characters")
    return text[:BLOCK].encode("ascii")


def encrypt_pin_in_child(pin: str, secret_key: str, enterprise_code: str) -> str:
    """encrypt_pin in a short-lived child process: importing cryptography's cipher bindings
    would stay in the daemon's memory for good (+6.6 MiB measured) for one block that never
    changes (the PIN block is deterministic: same password, key and IV, same 32 hex). The
    secrets go through a pipe, never the command line. Raises PinError."""
    import json
    import subprocess
    import sys

    try:
        r = subprocess.run([sys.executable, "-m", "agent.uplink.sm4_pin"], capture_output=True,
                           text=True, timeout=60,
                           input=json.dumps({"pin": pin, "key": secret_key, "iv": enterprise_code}))
    except (OSError, subprocess.SubprocessError) as e:
        raise PinError(f"cannot run the PIN block helper: {e}") from None
    if r.returncode != 0:
        raise PinError(r.stdout.strip()[:200] or f"PIN block helper failed: {r.stderr.strip()[-200:]}")
    return r.stdout.strip()


def _main() -> int:
    import json
    import sys

    try:
        args = json.loads(sys.stdin.read())
        print(encrypt_pin(str(args["pin"]), str(args["key"]), str(args["iv"])))
    except PinError as e:
        print(e)
        return 2
    except (ValueError, KeyError) as e:
        print(f"bad helper input: {type(e).__name__}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
