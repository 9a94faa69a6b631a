"""Versioned, checksummed reranker checkpoints: a checkpoint trained anywhere loads anywhere.

A checkpoint is a folder holding `weights.pt` (the state dict) and `manifest.json` (format, version,
SHA-256 of the weights, the `RerankerConfig` that builds the module, and any training config/metrics
the writer adds). It is written into a temporary sibling folder and renamed into place, so a reader
never sees a half-written checkpoint. Loading recomputes the SHA-256 and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from envs.atomic_io import atomic_dir
from pretrain.reranker import RerankerConfig, WholePageReranker

FORMAT = "smar-reranker/1"
WEIGHTS = "weights.pt"
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, malformed, or fails its checksum."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    version: str
    sha256: str
    config: RerankerConfig
    manifest: dict[str, Any]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_version(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.urandom(3).hex()}"


def write_model_folder(
    state: dict[str, torch.Tensor],
    path: str | Path,
    manifest: dict[str, Any],
    fmt: str = FORMAT,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write weights + manifest (format, SHA-256, creation time added) to the folder `path` atomically.

    The folder is built under a temporary sibling name and renamed into place, so a reader never sees a
    half-written model. Returns the manifest as written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"checkpoint {path} already exists (pass overwrite=True to replace it)")
    with atomic_dir(path, overwrite=True) as tmp:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp / WEIGHTS)
        manifest = {
            "format": fmt,
            "sha256": sha256_file(tmp / WEIGHTS),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **manifest,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def read_verified_manifest(path: str | Path, fmt: str = FORMAT) -> dict[str, Any]:
    """The manifest of a model folder, after checking its format, fields and the weights' SHA-256."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no {MANIFEST} (not a checkpoint folder)") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}/{MANIFEST}: not valid JSON ({e})") from e
    if manifest.get("format") != fmt:
        raise CheckpointError(f"{path}: format {manifest.get('format')!r}, expected {fmt!r}")
    for key in ("version", "sha256", "model_config"):
        if key not in manifest:
            raise CheckpointError(f"{path}/{MANIFEST}: missing {key!r}")
    weights = path / WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"{path}: no {WEIGHTS}")
    digest = sha256_file(weights)
    if digest != manifest["sha256"]:
        raise CheckpointError(
            f"{path}: checksum mismatch (manifest {manifest['sha256'][:12]}…, file {digest[:12]}…)"
        )
    return manifest


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Load a verified folder's weights into `module`; any failure is a bad checkpoint."""
    try:
        module.load_state_dict(torch.load(Path(path) / WEIGHTS, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - any load failure is a bad checkpoint
        raise CheckpointError(f"{path}: weights do not load into the configured model ({e})") from e


def save_checkpoint(
    model: WholePageReranker,
    path: str | Path,
    version: str | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Checkpoint:
    """Write `model` to the folder `path` atomically; return the written checkpoint's description."""
    version = version or make_version("reranker")
    manifest = write_model_folder(
        model.state_dict(),
        path,
        {"version": version, "model_config": model.config.to_json(), **(extra or {})},
        overwrite=overwrite,
    )
    return Checkpoint(Path(path), version, manifest["sha256"], model.config, manifest)


def verify_checkpoint(path: str | Path) -> Checkpoint:
    """Check manifest and SHA-256 without building the model."""
    manifest = read_verified_manifest(path)
    config = RerankerConfig.from_json(manifest["model_config"])
    return Checkpoint(Path(path), manifest["version"], manifest["sha256"], config, manifest)


def load_checkpoint(path: str | Path) -> tuple[WholePageReranker, Checkpoint]:
    """Verify and load a checkpoint; the model comes back in eval mode."""
    ckpt = verify_checkpoint(path)
    model = WholePageReranker(ckpt.config)
    load_weights(model, path)
    model.eval()
    return model, ckpt
