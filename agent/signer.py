"""The running agent's identity key: Ed25519 signing without the `cryptography` package.

Signing one challenge per connection is all `careline-agent run` does with its key, yet
loading `cryptography` costs ~7 MB of a 35 MB budget. Python's own `ssl` module has already
loaded OpenSSL's libcrypto (on Linux, on Windows and inside the PyInstaller build), which
implements Ed25519 (OpenSSL >= 1.1.1), so the signature is made there through ctypes: the
same constant-time library code, no copy of our own. Where that library cannot be found or
lacks Ed25519, the key is loaded with `cryptography` as before. Ed25519 is deterministic,
so both give the same bytes (tests/test_agent_signer.py checks it on many keys).

The key file stays what enrollment writes: PEM PKCS#8 (RFC 8410), unencrypted.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import os
import sys
from pathlib import Path
from typing import Any

from careline.shared.errors import ConfigError
from careline.shared.keys import Signer

# RFC 8410: the DER of an unencrypted Ed25519 PrivateKeyInfo is this prefix and the 32-byte seed.
_PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN, _PEM_END = "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----"
_NID_ED25519 = 1087  # EVP_PKEY_ED25519
_WINDOWS_NAMES = ("libcrypto-3-x64", "libcrypto-3", "libcrypto-1_1-x64", "libcrypto-1_1")


def seed_from_pem(pem: bytes) -> bytes:
    """The 32-byte Ed25519 seed of a PEM PKCS#8 key, or ConfigError."""
    text = pem.decode("ascii", "replace").strip()
    if not (text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END)):
        raise ConfigError("not a PEM private key")
    try:
        der = base64.b64decode("".join(text[len(_PEM_BEGIN):-len(_PEM_END)].split()), validate=True)
    except binascii.Error as exc:
        raise ConfigError(f"bad PEM base64: {exc}") from None
    if len(der) != len(_PKCS8_ED25519_PREFIX) + 32 or not der.startswith(_PKCS8_ED25519_PREFIX):
        raise ConfigError("not an unencrypted Ed25519 PKCS#8 key")
    return der[len(_PKCS8_ED25519_PREFIX):]


def _loaded_libcrypto_path() -> str | None:
    """The libcrypto this process already mapped (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if os.path.basename(path).startswith("libcrypto.so"):
                    return path
    except OSError:
        pass
    return None


def find_libcrypto() -> Any | None:
    """ctypes handle of the libcrypto behind `ssl`, with Ed25519 signing, or None."""
    import ssl  # noqa: F401  (loads libcrypto; the agent needs ssl anyway)

    candidates: list[str] = []
    if sys.platform == "win32":
        candidates = list(_WINDOWS_NAMES)  # found among the DLLs _ssl.pyd already loaded
    else:
        path = _loaded_libcrypto_path()
        if path:
            candidates = [path]
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
            _declare(lib)
        except (OSError, AttributeError):
            continue
        return lib
    return None


def _declare(lib: Any) -> None:
    p, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.EVP_PKEY_new_raw_private_key.restype = p
    lib.EVP_PKEY_new_raw_private_key.argtypes = [ctypes.c_int, p, ctypes.c_char_p, sz]
    lib.EVP_PKEY_free.restype = None
    lib.EVP_PKEY_free.argtypes = [p]
    lib.EVP_MD_CTX_new.restype = p
    lib.EVP_MD_CTX_new.argtypes = []
    lib.EVP_MD_CTX_free.restype = None
    lib.EVP_MD_CTX_free.argtypes = [p]
    lib.EVP_DigestSignInit.restype = ctypes.c_int
    lib.EVP_DigestSignInit.argtypes = [p, p, p, p, p]
    lib.EVP_DigestSign.restype = ctypes.c_int
    lib.EVP_DigestSign.argtypes = [p, ctypes.c_char_p, ctypes.POINTER(sz), ctypes.c_char_p, sz]


class LibcryptoSigner:
    """Ed25519 signing by OpenSSL's libcrypto; holds only the 32-byte seed."""

    def __init__(self, lib: Any, seed: bytes) -> None:
        self._lib, self._seed = lib, seed

    def sign(self, data: bytes) -> bytes:
        lib = self._lib
        pkey = lib.EVP_PKEY_new_raw_private_key(_NID_ED25519, None, self._seed, len(self._seed))
        if not pkey:
            raise ConfigError("libcrypto refused the Ed25519 key")
        ctx = lib.EVP_MD_CTX_new()
        try:
            if not ctx or lib.EVP_DigestSignInit(ctx, None, None, None, pkey) != 1:
                raise ConfigError("libcrypto cannot sign with Ed25519")
            signature = ctypes.create_string_buffer(64)
            length = ctypes.c_size_t(64)
            if lib.EVP_DigestSign(ctx, signature, ctypes.byref(length), data, len(data)) != 1:
                raise ConfigError("libcrypto Ed25519 signing failed")
            return signature.raw[:length.value]
        finally:
            if ctx:
                lib.EVP_MD_CTX_free(ctx)
            lib.EVP_PKEY_free(pkey)


def load_signer(path: Path, lib: Any | None = None) -> Signer:
    """The agent key at `path` as a Signer: libcrypto when available, else `cryptography`."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no key at {path}") from None
    lib = lib if lib is not None else find_libcrypto()
    if lib is None:
        from careline.shared.keys import load_private_key

        return load_private_key(path)
    try:
        seed = seed_from_pem(pem)
    except ConfigError as exc:
        raise ConfigError(f"unreadable key at {path}: {exc}") from None
    return LibcryptoSigner(lib, seed)
