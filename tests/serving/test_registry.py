"""Registry: checksummed versions, atomic pointer, rollback stack, refusal of bad checkpoints, admin token."""

from __future__ import annotations

import shutil

import pytest

from pretrain.checkpoint import CheckpointError
from serving.registry import AdminTokenError, Registry, RegistryError


def corrupt(src, dst):
    shutil.copytree(src, dst)
    w = dst / "weights.pt"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    return dst


def test_publish_rollback_history(serving_ckpts, tmp_path):
    reg = Registry(tmp_path / "reg")
    assert reg.current() is None
    assert reg.publish(serving_ckpts["a"].path) == "v-a"
    assert reg.publish(serving_ckpts["b"].path) == "v-b"
    cur = reg.current()
    assert cur.version == "v-b" and cur.sha256 == serving_ckpts["b"].sha256
    assert (cur.path / "weights.pt").exists()
    assert reg.stack() == ["v-a", "v-b"]
    assert reg.rollback() == "v-a"
    assert reg.current().version == "v-a"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    assert reg.publish(serving_ckpts["b"].path) == "v-b"  # re-publishing a known version is fine
    assert [h["action"] for h in reg.history()] == ["publish", "publish", "rollback", "publish"]
    assert sorted(reg.versions()) == ["v-a", "v-b"]


def test_corrupted_checkpoint_is_refused_and_pointer_kept(serving_ckpts, tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.publish(serving_ckpts["a"].path)
    bad = corrupt(serving_ckpts["b"].path, tmp_path / "bad")
    with pytest.raises(CheckpointError, match="checksum"):
        reg.publish(bad)
    assert reg.current().version == "v-a"
    assert "v-b" not in reg.versions()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError):
        reg.publish(tmp_path / "empty")
    assert reg.current().version == "v-a"


def test_same_version_different_weights_refused(serving_ckpts, tiny_world, ckpt_factory, tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.publish(serving_ckpts["a"].path)
    other = ckpt_factory(tiny_world.traffic.pages, tmp_path / "other", "v-a", seed=99)
    with pytest.raises(CheckpointError, match="different weights"):
        reg.publish(other.path)


def test_rollback_refuses_a_version_corrupted_after_publish(serving_ckpts, tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.publish(serving_ckpts["a"].path)
    reg.publish(serving_ckpts["b"].path)
    w = reg.versions_dir / "v-a" / "weights.pt"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(CheckpointError):
        reg.rollback()
    assert reg.current().version == "v-b"


def test_admin_token(serving_ckpts, tmp_path):
    reg = Registry(tmp_path / "reg")
    token = reg.set_admin_token()
    assert token not in reg.token_file.read_text()
    with pytest.raises(AdminTokenError, match="none given"):
        reg.publish(serving_ckpts["a"].path)
    with pytest.raises(AdminTokenError, match="wrong"):
        reg.publish(serving_ckpts["a"].path, token="guess")
    assert reg.current() is None
    assert reg.publish(serving_ckpts["a"].path, token=token) == "v-a"
    reg.publish(serving_ckpts["b"].path, token=token)
    with pytest.raises(AdminTokenError):
        reg.rollback()
    assert reg.rollback(token=token) == "v-a"


def test_generated_admin_tokens_pass_a_command_line(tmp_path):
    reg = Registry(tmp_path / "reg")
    tokens = {reg.set_admin_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(len(t) == 48 and not t.startswith("-") and int(t, 16) >= 0 for t in tokens)
    reg.check_token(reg.set_admin_token("given"))  # a given token is kept as it is


def test_cli_publish_requires_the_token(serving_ckpts, tmp_path, capsys):
    from agent.cli import command_parser
    from serving import cli

    reg = Registry(tmp_path / "reg")
    token = reg.set_admin_token()
    p = command_parser("smar serve", "")
    cli.add_arguments(p)
    args = p.instantiate(
        p.parse_args(
            ["publish", str(serving_ckpts["a"].path), "--app.registry", str(reg.root), "--token", "nope"]
        )
    )
    assert cli.run(args) == 3
    assert "refused" in capsys.readouterr().err
    assert reg.current() is None
    args = p.instantiate(p.parse_args(["rollback", "--app.registry", str(reg.root), "--token", token]))
    assert cli.run(args) == 1  # nothing to roll back to
