"""Virtual API keys: generation, hashing, display prefix, ids.

A key is ``tw-`` followed by the URL-safe base64 (no padding) of 32 random bytes from :func:`secrets.token_bytes`:
256 bits of entropy, 46 characters. It is shown once, when it is created (or rotated); the store keeps only its
hash, a short display prefix and a key id.

**Why a plain SHA-256 and not bcrypt/scrypt/argon2.** Slow, salted password hashes exist because passwords have
little entropy: an attacker holding the hash can try the likely ones. A key drawn from 256 random bits has no likely
values: inverting SHA-256 over a 2^256 space is out of reach whatever the hash costs, so slowness buys nothing. It
would cost: a slow hash takes milliseconds per request on the hot path, and a salt makes the hash differ per row so
a presented key could not be found by an index lookup on its hash. Hence the industry norm for high-entropy API
keys (GitHub tokens, Stripe and OpenAI keys are handled the same way): an unsalted SHA-256, looked up by equality.
Looking a key up by its hash in a dict or an index also compares no secret byte by byte, so no timing of the
comparison reveals anything about the key.

The display prefix (``tw-`` plus 8 characters: 48 of the 256 bits) tells keys apart in listings and logs; the 208
bits it does not show leave the key as unguessable as ever. Key ids (``key_`` + 12 hex digits) are what the
ledger, logs and the admin API name a key by.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

KEY_PREFIX = "tw-"
KEY_BYTES = 32  # 256 bits
#: ``tw-`` + 43 URL-safe base64 characters (32 bytes, unpadded).
KEY_RE = re.compile(r"^tw-[A-Za-z0-9_-]{43}$")
KEY_ID_RE = re.compile(r"^key_[0-9a-f]{12}$")
DISPLAY_CHARS = 8  # of the random part shown in the display prefix


def generate_key() -> str:
    """A new secret key: ``tw-`` + URL-safe base64 of 32 random bytes."""
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).rstrip(b"=").decode("ascii")


def hash_key(key: str) -> str:
    """What the store keeps and looks keys up by: the hex SHA-256 of the key's UTF-8 bytes (see the module
    docstring for why an unsalted fast hash is right for 256-bit random keys). Any string hashes, so a malformed
    token simply matches nothing."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(key: str) -> str:
    """The non-secret part shown in listings: ``tw-`` and the first 8 characters of the random part."""
    return key[: len(KEY_PREFIX) + DISPLAY_CHARS]


def new_key_id() -> str:
    """``key_`` + 12 random hex digits (48 bits: unique in practice; the store refuses a clash anyway)."""
    return "key_" + secrets.token_hex(6)


def looks_like_key(token: str) -> bool:
    """Whether ``token`` has the shape of a tierwise key (anything else cannot be one: no store lookup needed)."""
    return len(token) == 46 and KEY_RE.match(token) is not None


def new_key() -> tuple[str, str, str]:
    """``(key, hash, display prefix)`` of a freshly generated key."""
    key = generate_key()
    return key, hash_key(key), display_prefix(key)
