"""The one atomic-write helper: complete content or the old one, never a temporary left behind."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs.atomic_io import atomic_dir, atomic_path, write_json_atomic, write_parquet_atomic, write_text_atomic


def test_text_and_json_replace_and_leave_no_temporary(tmp_path):
    p = tmp_path / "sub" / "a.json"
    write_text_atomic(p, "old")
    write_json_atomic(p, {"x": 1})
    assert p.read_text() == '{\n  "x": 1\n}\n'
    assert [f.name for f in p.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_old_content_and_cleans_up(tmp_path):
    p = tmp_path / "a.txt"
    write_text_atomic(p, "old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_json_default_converts_numpy_like_values(tmp_path):
    import numpy as np

    p = write_json_atomic(tmp_path / "n.json", {"v": np.float32(0.5)})
    assert '"v": 0.5' in p.read_text()


def test_parquet_round_trip(tmp_path):
    t = pa.table({"a": [1, 2, 3]})
    p = write_parquet_atomic(t, tmp_path / "t.parquet", compression="zstd")
    assert pq.read_table(p).equals(t)


def test_atomic_dir_refuses_existing_unless_overwrite(tmp_path):
    d = tmp_path / "model"
    with atomic_dir(d) as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(FileExistsError), atomic_dir(d) as tmp:
        pass
    with atomic_dir(d, overwrite=True) as tmp:
        (tmp / "w").write_text("2")
    assert (d / "w").read_text() == "2"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model"]


def test_atomic_dir_failure_keeps_old_folder(tmp_path):
    d = tmp_path / "model"
    with atomic_dir(d) as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(d, overwrite=True) as tmp:
        (tmp / "w").write_text("2")
        raise RuntimeError("crash")
    assert (d / "w").read_text() == "1"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model"]
