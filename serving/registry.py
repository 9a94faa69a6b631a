"""The model registry: a folder of versioned, checksummed checkpoints and a pointer to the current one.

Layout::

    REGISTRY/versions/<version>/{weights.pt, manifest.json}   (pretrain.checkpoint folders)
    REGISTRY/CURRENT.json        {"version", "sha256", "stack": [older ..., current]}  (atomic rename)
    REGISTRY/history.jsonl       audit trail of publishes and rollbacks
    REGISTRY/admin_token.sha256  optional: SHA-256 of the admin token publish/rollback require

Publishing verifies the checkpoint's SHA-256 and loads it into the reranker *before* anything changes;
a checkpoint that fails either is refused (CheckpointError) and the pointer is untouched. The copy in
the registry is verified again before the pointer moves. `rollback` pops the pointer stack. This
module only manages files; `serving.deploy.apply_version` makes a running app swap to a version.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from envs.atomic_io import atomic_dir, write_text_atomic
from pretrain.checkpoint import CheckpointError, load_checkpoint, verify_checkpoint

_VERSION_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(RuntimeError):
    """Nothing to roll back to, no current version, an unknown version."""


class AdminTokenError(PermissionError):
    """Publish/rollback without the configured admin token."""


@dataclass(frozen=True)
class Entry:
    version: str
    sha256: str
    path: Path


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.versions_dir = self.root / "versions"
        self.pointer = self.root / "CURRENT.json"
        self.history_file = self.root / "history.jsonl"
        self.token_file = self.root / "admin_token.sha256"

    # ------------------------------------------------------------------ admin token
    def set_admin_token(self, token: str | None = None) -> str:
        """Configure (or rotate) the admin token; returns it. Only its SHA-256 is stored. A generated
        token is hex (192 bits): a URL-safe one starts with "-" one time in 64, which a command line
        (`--token -abc`) reads as an option."""
        token = token or secrets.token_hex(24)
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.token_file, hashlib.sha256(token.encode()).hexdigest() + "\n")
        os.chmod(self.token_file, 0o600)
        return token

    def requires_token(self) -> bool:
        return self.token_file.exists()

    def check_token(self, token: str | None) -> None:
        if not self.requires_token():
            return
        want = self.token_file.read_text().strip()
        got = hashlib.sha256((token or "").encode()).hexdigest()
        if not token or not hmac.compare_digest(want, got):
            raise AdminTokenError(
                f"registry {self.root} requires an admin token (--token or SMAR_ADMIN_TOKEN); "
                + ("none given" if not token else "the given token is wrong")
            )

    # ------------------------------------------------------------------ reading
    def _read_pointer(self) -> dict | None:
        try:
            return json.loads(self.pointer.read_text())
        except FileNotFoundError:
            return None

    def current(self) -> Entry | None:
        p = self._read_pointer()
        if p is None:
            return None
        return Entry(p["version"], p["sha256"], self.versions_dir / p["version"])

    def entry(self, version: str) -> Entry:
        path = self.versions_dir / version
        if not _VERSION_OK.match(version) or not path.is_dir():
            raise RegistryError(f"registry {self.root} has no version {version!r}")
        ckpt = verify_checkpoint(path)
        return Entry(version, ckpt.sha256, path)

    def versions(self) -> list[str]:
        if not self.versions_dir.exists():
            return []
        dirs = [d for d in self.versions_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
        return [d.name for d in sorted(dirs, key=lambda d: d.stat().st_mtime)]

    def stack(self) -> list[str]:
        p = self._read_pointer()
        return list(p["stack"]) if p else []

    def history(self) -> list[dict]:
        if not self.history_file.exists():
            return []
        return [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]

    # ------------------------------------------------------------------ writing
    def publish(self, checkpoint_path: str | Path, token: str | None = None) -> str:
        """Verify, load, copy in, verify the copy, move the pointer. Returns the new current version."""
        self.check_token(token)
        src = Path(checkpoint_path).expanduser().resolve()
        _, ckpt = load_checkpoint(src)  # SHA-256 + the weights really load into the configured model
        version = ckpt.version
        if not _VERSION_OK.match(version):
            raise CheckpointError(f"{src}: version {version!r} is not a safe folder name")
        dest = self.versions_dir / version
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            have = verify_checkpoint(dest)
            if have.sha256 != ckpt.sha256:
                raise CheckpointError(
                    f"registry already holds version {version!r} with different weights "
                    f"({have.sha256[:12]}… vs {ckpt.sha256[:12]}…)"
                )
        else:
            with atomic_dir(dest) as tmp:
                for name in ("weights.pt", "manifest.json"):
                    shutil.copy2(src / name, tmp / name)
        copied = verify_checkpoint(dest)
        if copied.sha256 != ckpt.sha256:
            raise CheckpointError(f"{dest}: copy does not match its source checksum")
        stack = [v for v in self.stack() if v != version] + [version]
        self._move(version, copied.sha256, stack, "publish", source=str(src))
        return version

    def rollback(self, token: str | None = None) -> str:
        """Point back at the version that was current before this one. Returns it."""
        self.check_token(token)
        stack = self.stack()
        if len(stack) < 2:
            raise RegistryError(f"registry {self.root}: nothing to roll back to (history {stack})")
        previous = stack[-2]
        entry = self.entry(previous)  # re-verified: a corrupted old version is not rolled back to
        self._move(previous, entry.sha256, stack[:-1], "rollback", source=stack[-1])
        return previous

    def _move(self, version: str, sha256: str, stack: list[str], action: str, source: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        before = self.current()
        write_text_atomic(
            self.pointer, json.dumps({"version": version, "sha256": sha256, "stack": stack}) + "\n"
        )
        rec = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "action": action,
            "version": version,
            "previous": before.version if before else None,
            "source": source,
        }
        with open(self.history_file, "a") as f:
            f.write(json.dumps(rec) + "\n")
