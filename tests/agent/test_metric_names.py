"""One name per quantity (issue 17): the consistency names, and what older outputs wrote is read back."""

from __future__ import annotations

import csv

import pytest

from agent.online.report import round_line, upgrade_state
from agent.train_log import CSV_COLUMNS, LEGACY_COLUMNS, read_csv, upgrade_row, write_csv
from pretrain.evaluate import RANKING_METRICS, format_table
from pretrain.train import loss_labels


def test_each_consistency_quantity_has_its_own_name():
    assert "candidate_consistency" in RANKING_METRICS and "consistency" not in RANKING_METRICS
    assert {"train_consistency", "select_consistency", "eval_consistency"} <= set(CSV_COLUMNS)
    assert not any("agreement" in c for c in CSV_COLUMNS)
    assert loss_labels({"loss": 1.0, "consistency": 0.5, "anchor": 0.1}) == {
        "loss": 1.0,
        "consistency_loss": 0.5,
        "anchor": 0.1,
    }


def test_a_pretrain_table_of_an_older_run_shows_its_candidate_consistency():
    old = format_table({"smar": {"annotation_fraction": 0.1, "ndcg@10": 0.7, "consistency": 0.9021}})
    new = format_table(
        {"smar": {"annotation_fraction": 0.1, "ndcg@10": 0.7, "candidate_consistency": 0.9021}}
    )
    assert old == new and "0.9021" in new and "candidate_consistency" in new.splitlines()[0]


def test_resume_reads_an_older_metrics_csv_in_the_current_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    old_cols = ["iteration", "env_steps", "agreement", "select_agreement", "eval_consistency"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_cols)
        w.writeheader()
        w.writerow(
            {
                "iteration": 1,
                "env_steps": 128,
                "agreement": 0.8,
                "select_agreement": 0.7,
                "eval_consistency": 0.6,
            }
        )
    (row,) = read_csv(path)
    assert (row["train_consistency"], row["select_consistency"], row["eval_consistency"]) == (0.8, 0.7, 0.6)
    assert not set(LEGACY_COLUMNS) & set(row)
    write_csv(path, [row])  # rewritten by --resume: the figures stay
    assert read_csv(path)[0]["train_consistency"] == 0.8
    assert upgrade_row({"agreement": 0.5, "eval_reward": 1.0}) == {
        "train_consistency": 0.5,
        "eval_reward": 1.0,
    }


def test_an_older_online_state_is_read_in_the_current_names():
    rec = {
        "round": 0,
        "world": "base",
        "version": "v0",
        "live_reward": 0.2,
        "impressions": 10,
        "failed_requests": 0,
        "seconds": {"round": 1.0},
        "heldout_reward": {"mean": 0.3, "lo": 0.2, "hi": 0.4},
        "heldout_served": {"mean": 0.3},
        "frozen_heldout": {"mean": 0.3},
        "ope": {"consistency": 0.86, "difference": {"mean": 0.01, "lcb": 0.0}, "reasons": ["x"]},
        "consistency": 0.87,
        "candidate_consistency": 0.86,
        "consistency_target": 0.81,
        "published": False,
        "update": {"train_agreement": 0.9, "hinge": 0.1},
    }
    state = upgrade_state({"rounds": [rec]})
    (up,) = state["rounds"]
    assert "candidate_consistency" not in up
    assert up["update"] == {"train_consistency": 0.9, "hinge": 0.1}
    assert "consistency 0.860/0.810" in round_line(up)
    assert upgrade_state({}) == {}


@pytest.mark.parametrize("key", ["agreement", "select_agreement"])
def test_legacy_columns_map_to_current_ones(key):
    assert LEGACY_COLUMNS[key] in CSV_COLUMNS
