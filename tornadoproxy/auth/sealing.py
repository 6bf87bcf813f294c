"""Sealed cached logins: usernames become HMAC keys, each token is encrypted under its own password.

A cached login leaves this process (persistence file, Redis) only as a `SealedRecord`: the key is
HMAC-SHA256(cache secret, family + normalised username); the upstream answer (token included) is
AES-256-GCM encrypted under scrypt(password, random salt). Holding records reveals no password and no
token unless the password is guessed at scrypt's cost per guess and per record; a wrong password
fails the GCM tag, so the record itself is the password check. Pure functions, no I/O; `derive_key`
is slow on purpose and must run off the event loop. The `cryptography` package (AES-GCM) is imported
by the first seal or unseal: it costs about 7 MB of RSS per process, which a gateway nobody logs in
through does not need.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SALT_BYTES = 16
NONCE_BYTES = 12
_SCRYPT_R = 8
_SCRYPT_P = 1


def normalise_username(username: str) -> str:
    """The form under which a username is cached: Unicode NFKC, trimmed, case-folded (the upstream
    treats e-mail addresses case-insensitively). `+` and every other character are kept."""
    return unicodedata.normalize("NFKC", username).strip().casefold()


def user_key(secret: bytes, family: str, username: str) -> str:
    """The cache key of a username: hex HMAC-SHA256 under the cache secret."""
    message = family.encode() + b"\0" + normalise_username(username).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def token_id(secret: bytes, token: str) -> str:
    """What a record remembers of its token, to find it when a relayed request gets 401."""
    return hmac.new(secret, b"token\0" + token.encode(), hashlib.sha256).hexdigest()


def fingerprint(process_key: bytes, key: str, password: str) -> bytes:
    """A fast keyed hash of (username key, password) under a key that never leaves the process:
    names a login in flight, a remembered failure, a record already opened with this password."""
    return hmac.new(process_key, key.encode() + b"\0" + password.encode(), hashlib.sha256).digest()


def derive_key(password: str, salt: bytes, cost: int) -> bytes:
    """scrypt(password, salt, N=2**cost, r=8, p=1) -> 32 bytes. Slow by design: run in an executor."""
    n = 1 << cost
    return hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=n,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        dklen=32,
        maxmem=2 * 128 * _SCRYPT_R * n + (1 << 20),
    )


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """One cached login as stored: everything but `ciphertext` is bound to it as GCM associated data,
    so a record cannot be moved to another user or given a longer life without failing to open."""

    key: str
    family: str
    expires_at: int  # epoch seconds
    token_id: str
    cost: int
    salt: bytes
    nonce: bytes
    ciphertext: bytes

    def associated_data(self) -> bytes:
        return f"{self.key}|{self.family}|{self.expires_at}|{self.token_id}|{self.cost}".encode()

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "family": self.family,
            "expires_at": self.expires_at,
            "token_id": self.token_id,
            "cost": self.cost,
            "salt": _b64(self.salt),
            "nonce": _b64(self.nonce),
            "ciphertext": _b64(self.ciphertext),
        }

    @classmethod
    def from_json(cls, data: Any) -> SealedRecord:
        """Raises ValueError for anything that is not a well-formed record."""
        if not isinstance(data, dict):
            raise ValueError("a record must be an object")
        try:
            record = cls(
                key=str(data["key"]),
                family=str(data["family"]),
                expires_at=int(data["expires_at"]),
                token_id=str(data["token_id"]),
                cost=int(data["cost"]),
                salt=base64.b64decode(data["salt"], validate=True),
                nonce=base64.b64decode(data["nonce"], validate=True),
                ciphertext=base64.b64decode(data["ciphertext"], validate=True),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed record ({type(error).__name__})") from None
        if len(record.nonce) != NONCE_BYTES or not 10 <= record.cost <= 20:
            raise ValueError("malformed record (nonce or cost)")
        return record


def seal(
    derived: bytes, salt: bytes, cost: int, key: str, family: str, expires_at: int, token: str, body: bytes
) -> SealedRecord:
    """Encrypt `body` under `derived` (= derive_key(password, salt, cost)) into a record; `token` is
    the token's `token_id`, never the token."""
    nonce = os.urandom(NONCE_BYTES)
    header = SealedRecord(key, family, expires_at, token, cost, salt, nonce, b"")
    ciphertext = _cipher(derived).encrypt(nonce, body, header.associated_data())
    return SealedRecord(key, family, expires_at, token, cost, salt, nonce, ciphertext)


def unseal(record: SealedRecord, derived: bytes) -> bytes | None:
    """The body, or None when `derived` comes from another password (or the record was altered)."""
    from cryptography.exceptions import InvalidTag

    try:
        return _cipher(derived).decrypt(record.nonce, record.ciphertext, record.associated_data())
    except InvalidTag:
        return None


def _cipher(derived: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # here: 7 MB, first login only

    return AESGCM(derived)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
