"""Figures across `smar online` runs: golden means, pooled shares and best-within-4 from report.json files."""

import json

import pytest

from agent.online.across_runs import drift_table, load_report, main, run_checks


def _report(lost: float, gains: list[float], served_lost: float = 0.1) -> dict:
    diff = {"mean": 0.0, "lo": -0.01, "hi": 0.01, "se": 0.005, "sessions": 200}
    recovery = [
        {
            "round": k + 1,
            "rounds_after_change": k + 1,
            "online_minus_frozen": {**diff, "mean": g},
            "recovered_fraction": g / lost,
            "online_minus_frozen_served": {**diff, "mean": g / 2},
            "recovered_fraction_served": g / 2 / served_lost,
        }
        for k, g in enumerate(gains)
    ]
    summary = {
        "final_minus_initial": diff,
        "final_minus_initial_served": diff,
        "failed_requests": 0,
        "published": 1,
        "rounds": len(gains) + 1,
        "consistency_min": 0.86,
        "consistency_target": 0.81,
        "drift": {"frozen_lost": lost, "frozen_lost_served": served_lost, "recovery": recovery},
    }
    return {"summary": summary, "rounds": [], "config": {}}


def test_drift_table_golden() -> None:
    """Run a loses 0.1 and recovers 0.02 / 0.06 by rounds 1 / 2; run b loses 0.2 and recovers 0.08 / 0.04:
    shares 20 / 60 % and 40 / 20 %, means 30 % and 40 %, pooled 0.10 / 0.3 and 0.10 / 0.3, best 60 % and
    40 % (mean 50 %)."""
    t = drift_table({"a": _report(0.1, [0.02, 0.06]), "b": _report(0.2, [0.08, 0.04])})
    r1, r2 = t["rounds"][1]["deterministic"], t["rounds"][2]["deterministic"]
    assert r1["mean"] == pytest.approx(0.3) and r2["mean"] == pytest.approx(0.4)
    assert r1["pooled"] == pytest.approx(1 / 3) and r2["pooled"] == pytest.approx(1 / 3)
    assert r1["se"] == pytest.approx(0.1)  # sd 0.1414 / sqrt 2
    assert t["best_within_4_deterministic"]["mean"] == pytest.approx(0.5)
    assert t["rounds"][1]["served"]["per_run"] == {"a": pytest.approx(0.1), "b": pytest.approx(0.4)}
    assert t["frozen_lost"]["mean"] == pytest.approx(0.15)


def test_runs_without_drift_give_checks_only(tmp_path) -> None:
    nodrift = _report(0.1, [0.0])
    del nodrift["summary"]["drift"]
    assert drift_table({"n": nodrift}) == {}
    assert run_checks({"n": nodrift})["n"]["drift"] is False
    for name, rep in {"a": _report(0.1, [0.05]), "n": nodrift}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(rep))
    assert main([str(tmp_path / "a"), str(tmp_path / "n"), "--out", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out" / "across_runs.json").read_text())
    assert out["drift"]["rounds"]["1"]["deterministic"]["mean"] == pytest.approx(0.5)
    assert (tmp_path / "out" / "across_runs.png").is_file()


def test_a_folder_without_a_report_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no report.json"):
        load_report(tmp_path)
