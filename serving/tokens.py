"""Signed event ids: a /rank response's event id proves by itself that this app served it.

    event_id = <issue ms, base 36> "." <nonce, 16 chars> "." <model version, base64url> "." <HMAC, 22 chars>

The HMAC (SHA-256, truncated to 128 bits) covers the issue time, the nonce and the model version, under a
per-deployment key kept in `STATE_DIR/event_key` (32 random bytes, created once, mode 0600, shared by
every replica through the file system). Any replica, including one started after a crash or a whole-app
restart, can therefore tell a served event from a forged one, read its issue time (for the TTL) and its
model version, without asking anyone: a forged or altered id fails `verify` at the ingress and never
reaches the ledger. What a token cannot prove (which items were shown, whether feedback was already
taken) is the ledger's job (serving.ledger, SQLite in WAL mode).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "event_key"
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
MAC_BYTES = 16
NONCE_BYTES = 12


def b36(n: int) -> str:
    """`n` >= 0 in base 36 (lower-case digits): the time part of every event id."""
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if n == 0:
            return out


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@dataclass(frozen=True)
class Verified:
    issued_s: float
    model_version: str


class EventSigner:
    """Issue and verify signed event ids with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("event key must be at least 16 bytes")
        self._key = key

    @staticmethod
    def from_dir(state_dir: str | Path) -> EventSigner:
        """The deployment's signer: reads `state_dir/event_key`, creating it (atomically) if absent."""
        return EventSigner(load_or_create_key(state_dir))

    def _mac(self, msg: str) -> str:
        return _b64(hmac.new(self._key, msg.encode(), hashlib.sha256).digest()[:MAC_BYTES])

    def issue(self, model_version: str, now_s: float | None = None) -> str:
        ms = int((time.time() if now_s is None else now_s) * 1000)
        body = f"{b36(ms)}.{_b64(secrets.token_bytes(NONCE_BYTES))}.{_b64(model_version.encode())}"
        return f"{body}.{self._mac(body)}"

    def verify(self, event_id: str) -> Verified | None:
        """Issue time and model version of an id this key signed, else None (forged, altered, garbage)."""
        parts = event_id.split(".")
        if len(parts) != 4:
            return None
        head, _, ver, mac = parts
        if not head or len(head) > 12:
            return None
        body = event_id[: -len(mac) - 1]
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            return Verified(int(head, 36) / 1000.0, _unb64(ver).decode())
        except (ValueError, UnicodeDecodeError):
            return None


def load_or_create_key(state_dir: str | Path) -> bytes:
    """32 random bytes at `state_dir/event_key`; the first process to get here creates it (link(2) is
    atomic and refuses to overwrite, so concurrent replicas agree on one key)."""
    d = Path(state_dir)
    path = d / KEY_FILE
    if path.exists():
        return _read_key(path)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another replica won; use its key
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"{path}: event key is truncated ({len(key)} bytes)")
    return key
