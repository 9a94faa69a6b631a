"""The page contract: round trip, streaming, padding/mask, and every validation error."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from envs.pages import MODALITY_ID, Pages
from pretrain.page import (
    PAGE_SCHEMA,
    PageValidationError,
    collate,
    from_arrow,
    iter_pages,
    read_pages,
    to_arrow,
    write_pages,
)

DIMS = {"doc": 3, "image": 2, "video": 4, "answer": 1}


def small_pages() -> Pages:
    """3 pages (sizes 3, 1, 2) mixing modalities, with nulls in every nullable column."""
    mods = ["doc", "image", "answer", "video", "doc", "image"]
    feats = np.zeros((6, 4), np.float32)
    for i, m in enumerate(mods):
        feats[i, : DIMS[m]] = np.arange(1, DIMS[m] + 1) * (i + 1) * (100.0 if m == "doc" else 0.1)
    return Pages(
        page_id=np.array(["p0", "p1", "p2"], dtype=object),
        query_id=np.array(["q0", "q0", "q1"], dtype=object),
        query_features=np.arange(6, dtype=np.float32).reshape(3, 2),
        user_features=np.arange(9, dtype=np.float32).reshape(3, 3) - 4,
        offsets=np.array([0, 3, 4, 6]),
        item_id=np.array(["a", "b", "c", "a", "d", "e"], dtype=object),  # "a" twice but on different pages
        modality=np.array([MODALITY_ID[m] for m in mods], np.int8),
        features=feats,
        feature_dims=dict(DIMS),
        single_modal_score=np.array([0.5, np.nan, 1.5, -2.0, np.nan, 0.0], np.float32),
        relevance=np.array([4, -1, 0, 2, -1, 3], np.int8),
        click=np.array([1, 0, -1, -1, 1, 0], np.int8),
        dwell=np.array([12.5, np.nan, np.nan, np.nan, 0.0, np.nan], np.float32),
    )


def assert_pages_equal(a: Pages, b: Pages) -> None:
    for name in ("page_id", "query_id", "item_id"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    for name in ("query_features", "user_features", "offsets", "modality", "features", "relevance", "click"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("single_modal_score", "dwell"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)  # NaN == NaN here
    assert a.feature_dims == b.feature_dims


def test_round_trip_every_column_with_nulls(tmp_path):
    pages = small_pages()
    table = to_arrow(pages)
    assert table.schema.equals(PAGE_SCHEMA, check_metadata=False)
    # nulls are real Arrow nulls on disk, not sentinels
    assert table.column("relevance").combine_chunks().flatten().null_count == 2
    assert table.column("click").combine_chunks().flatten().null_count == 2
    assert table.column("single_modal_score").combine_chunks().flatten().null_count == 2
    assert table.column("dwell").combine_chunks().flatten().null_count == 4
    # per-item features keep each modality's true length
    assert [len(f) for f in table.column("features")[0].as_py()] == [3, 2, 1]
    path = write_pages(pages, tmp_path / "pages.parquet")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temp file left behind
    assert_pages_equal(read_pages(path), pages)


def test_iter_pages_streams_the_same_pages(tmp_path):
    pages = Pages.concat([small_pages()] * 5)
    pages.page_id = np.array([f"p{i}" for i in range(len(pages))], dtype=object)
    path = write_pages(pages, tmp_path / "pages.parquet", row_group_pages=4)
    parts = list(iter_pages(path, batch_pages=4))
    assert len(parts) == 4 and max(len(p) for p in parts) <= 4
    assert_pages_equal(Pages.concat(parts), read_pages(path))
    # a folder of files streams too
    write_pages(pages.select([0, 1]), tmp_path / "dir" / "a.parquet")
    write_pages(pages.select([2]), tmp_path / "dir" / "b.parquet")
    assert_pages_equal(Pages.concat(list(iter_pages(tmp_path / "dir"))), pages.select([0, 1, 2]))


def test_collate_pads_and_masks():
    pages = small_pages()
    batch = collate(pages, n_max=5)
    assert batch.features.shape == (3, 5, 4) and batch.mask.dtype == torch.bool
    assert batch.mask.tolist() == [
        [True, True, True, False, False],
        [True, False, False, False, False],
        [True, True, False, False, False],
    ]
    assert (batch.features[~batch.mask] == 0).all()
    assert torch.equal(batch.features[2, 1], torch.from_numpy(pages.features[5]))
    assert batch.relevance.tolist()[0] == [4, -1, 0, -1, -1]  # unknown and padding are -1
    assert batch.has_score.tolist()[0][:3] == [True, False, True]
    assert batch.single_modal_score[0, 1] == 0.0  # unknown score -> 0 with has_score False
    assert batch.modality[2, :2].tolist() == [MODALITY_ID["doc"], MODALITY_ID["image"]]
    assert batch.query.shape == (3, 2) and batch.user.shape == (3, 3)
    assert collate(pages).features.shape[1] == 3  # default n_max = longest page
    with pytest.raises(ValueError, match="'p0' has 3 candidates > n_max=2"):
        collate(pages, n_max=2)


# --------------------------------------------------------------------------- validation errors
def _with_item_column(table: pa.Table, name: str, values: list) -> pa.Table:
    """Replace one per-item list column, keeping the page offsets."""
    col = table.column(name).combine_chunks()
    new = pa.ListArray.from_arrays(col.offsets, pa.array(values, col.type.value_type))
    return table.set_column(table.schema.get_field_index(name), table.schema.field(name), new)


def _error(table: pa.Table) -> str:
    with pytest.raises(PageValidationError) as e:
        from_arrow(table, "src.parquet")
    return str(e.value)


def test_unknown_modality_names_page_and_field():
    t = _with_item_column(
        to_arrow(small_pages()), "modality", ["doc", "image", "answer", "video", "doc", "audio"]
    )
    msg = _error(t)
    assert "src.parquet" in msg and "page 'p2'" in msg and "field 'modality'" in msg and "'audio'" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_name_page_and_field(bad):
    t = to_arrow(small_pages())
    feats = t.column("features").to_pylist()
    feats[1][0][1] = bad  # page p1's only item
    t = t.set_column(
        t.schema.get_field_index("features"), "features", pa.array(feats, PAGE_SCHEMA.field("features").type)
    )
    msg = _error(t)
    assert "page 'p1'" in msg and "field 'features'" in msg and "NaN or inf" in msg


@pytest.mark.parametrize("grade", [5, -2, 100])
def test_label_outside_0_4_names_page_and_field(grade):
    t = _with_item_column(to_arrow(small_pages()), "relevance", [4, None, 0, 2, None, grade])
    msg = _error(t)
    assert "page 'p2'" in msg and "field 'relevance'" in msg and f"grade {grade}" in msg


def test_duplicate_item_ids_name_page_and_field():
    t = _with_item_column(to_arrow(small_pages()), "item_id", ["a", "b", "c", "a", "d", "d"])
    msg = _error(t)
    assert "page 'p2'" in msg and "field 'item_id'" in msg and "duplicate item id 'd'" in msg


def test_same_item_id_on_different_pages_is_not_a_duplicate():
    # regression: keys "1"+"1a" and "11"+"a" collided when the NUL separator vanished in numpy strings
    n = 12
    ids = ["x"] * n
    ids[1], ids[11] = "1a", "a"
    pages = Pages(
        page_id=np.array([f"p{i}" for i in range(n)], dtype=object),
        query_id=np.array(["q"] * n, dtype=object),
        query_features=np.zeros((n, 1), np.float32),
        user_features=np.zeros((n, 0), np.float32),
        offsets=np.arange(n + 1),
        item_id=np.array(ids, dtype=object),
        modality=np.zeros(n, np.int8),
        features=np.ones((n, 3), np.float32),
        feature_dims=dict(DIMS),
    )
    assert from_arrow(to_arrow(pages)).item_id.tolist() == ids


def test_wrong_feature_length_names_page_and_field():
    t = to_arrow(small_pages())
    feats = t.column("features").to_pylist()
    feats[2][1] = feats[2][1] + [0.0]  # an image item with 3 features, image dim is 2
    t = t.set_column(
        t.schema.get_field_index("features"), "features", pa.array(feats, PAGE_SCHEMA.field("features").type)
    )
    msg = _error(t)
    assert "page 'p2'" in msg and "field 'features'" in msg and "has 3 features, expected 2" in msg


def test_item_list_length_mismatch_names_page_and_field():
    t = to_arrow(small_pages())
    rel = t.column("relevance").to_pylist()
    rel[1] = [1, 2]  # page p1 has one item
    t = t.set_column(
        t.schema.get_field_index("relevance"), "relevance", pa.array(rel, PAGE_SCHEMA.field("relevance").type)
    )
    msg = _error(t)
    assert "page 'p1'" in msg and "field 'relevance'" in msg


def test_non_finite_query_features_and_dwell():
    t = to_arrow(small_pages())
    q = t.column("query_features").to_pylist()
    q[2][0] = float("nan")
    t2 = t.set_column(
        t.schema.get_field_index("query_features"),
        "query_features",
        pa.array(q, PAGE_SCHEMA.field("query_features").type),
    )
    msg = _error(t2)
    assert "page 'p2'" in msg and "field 'query_features'" in msg
    msg = _error(_with_item_column(t, "dwell", [-1.0, None, None, None, 0.0, None]))
    assert "page 'p0'" in msg and "field 'dwell'" in msg


def test_missing_column_is_named(tmp_path):
    path = write_pages(small_pages(), tmp_path / "pages.parquet")
    pq.write_table(pq.read_table(path).drop_columns(["modality"]), tmp_path / "broken.parquet")
    with pytest.raises(PageValidationError, match=r"broken\.parquet.*missing required column.*'modality'"):
        read_pages(tmp_path / "broken.parquet")


def test_nullable_columns_may_be_absent():
    t = to_arrow(small_pages()).drop_columns(["single_modal_score", "relevance", "click", "dwell"])
    pages = from_arrow(t)
    assert (pages.relevance == -1).all() and (pages.click == -1).all()
    assert np.isnan(pages.single_modal_score).all() and np.isnan(pages.dwell).all()
