"""`smar export` / `smar import` settings: every one a dataclass field, and OUT/resolved.yaml fed back with
`--config` reproduces the run file for file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex

import pytest
import yaml

from agent.cli import main
from pretrain.export import MODAL_MAP_ARG, NOTE_TYPES_ARG, ExportConfig
from pretrain.importers import ImportConfig


def checksums(folder) -> dict[str, str]:
    """SHA-256 of every Parquet file below `folder`, and of its JSON summaries without the timings."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix == ".parquet":
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.suffix == ".json":
            d = json.loads(p.read_text())
            d.pop("seconds", None)
            out[str(p.relative_to(folder))] = json.dumps(d, sort_keys=True)
    return out


def resolved(folder) -> dict:
    return yaml.safe_load((folder / "resolved.yaml").read_text())


@pytest.mark.parametrize(
    "fmt, extra",
    [
        ("crossrank", ["--export.batch_pages", "5", "--export.single_modal", "false"]),
        ("qilin", ["--export.batch_pages", "4", "--export.upstream", "none"]),
    ],
)
def test_export_resolved_config_reproduces_the_files(world_dir, tmp_path, capsys, fmt, extra):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["export", str(world_dir), "--out", str(first), "--export.format", fmt, *extra]) == 0
    settings = resolved(first)
    assert set(settings["export"]) == {f.name for f in dataclasses.fields(ExportConfig)}
    assert settings["export"]["format"] == fmt and settings["world"] == str(world_dir)
    capsys.readouterr()
    assert main(["export", "--config", str(first / "resolved.yaml"), "--out", str(second)]) == 0
    assert checksums(first) == checksums(second) and len(checksums(first)) >= 4
    # the printed import command reads what was written
    hint = capsys.readouterr().out.split("import with: ")[1].strip()
    argv = shlex.split(hint.replace("--out DIR", f"--out {tmp_path / 'imp'}"))
    assert argv[:2] == ["smar", "import"] and main(argv[1:]) == 0
    assert (tmp_path / "imp" / "train.parquet").exists()


@pytest.mark.parametrize(
    "fmt, extra",
    [
        (
            "crossrank",
            ["--import.modal_map", MODAL_MAP_ARG, "--import.query_text", "false", "--import.batch_rows", "3"],
        ),
        (
            "qilin",
            ["--import.note_types", NOTE_TYPES_ARG, "--import.dwell_cuts", "[20, 90]", "--import.limit", "9"],
        ),
    ],
)
def test_import_resolved_config_reproduces_the_pages(world_dir, tmp_path, fmt, extra):
    src = tmp_path / "src"
    assert (
        main(
            ["export", str(world_dir), "--out", str(src), "--export.format", fmt, "--export.upstream", "none"]
        )
        == 0
    )
    first, second = tmp_path / "a", tmp_path / "b"
    argv = ["import", str(src), "--out", str(first), "--import.format", fmt, "--import.text_dim", "8", *extra]
    assert main(argv) == 0
    settings = resolved(first)
    unset = {"limit"} if "--import.limit" not in extra else set()  # a None setting is not dumped
    assert set(settings["import"]) | unset == {f.name for f in dataclasses.fields(ImportConfig)}
    assert settings["import"]["text_dim"] == 8 and settings["src"] == str(src)
    assert main(["import", "--config", str(first / "resolved.yaml"), "--out", str(second)]) == 0
    a, b = checksums(first), checksums(second)
    assert a == b and {"train.parquet", "test.parquet", "import.json"} <= set(a)
    summary = json.loads(a["import.json"])
    cfg = ImportConfig(**settings["import"]).reader_config()
    assert summary["config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))


def test_import_settings_are_checked(tmp_path, capsys):
    base = ["import", str(tmp_path), "--out", str(tmp_path / "o"), "--import.format", "crossrank"]
    with pytest.raises(SystemExit):
        main([*base, "--import.modal_map", '{"0": "pdf"}'])
    assert "modal_map targets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--import.dwell_cuts", "[120, 30]"])
    assert "dwell cuts" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the pre-dataclass spelling is gone, not silently ignored
        main([*base, "--modal-map", "0=doc"])
    # keys of a YAML mapping typed without quotes still name the codes
    cfg = ImportConfig(format="crossrank", modal_map={0: "doc", 1: "image"}, note_types={"3": "doc"})
    assert cfg.modal_map == {"0": "doc", "1": "image"} and cfg.note_types == {3: "doc"}
    assert not (tmp_path / "o").exists()
