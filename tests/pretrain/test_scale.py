"""`smar bench scale`'s measurement: peak resident memory of a process tree, children included."""

from __future__ import annotations

import sys

from pretrain.scale import measured, scale_world

ALLOC = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'x = bytearray(300 * 2**20); import time; time.sleep(2)'])\n"
    "y = bytearray(100 * 2**20); time.sleep(2); child.wait()\n"
)


def test_peak_rss_counts_children(tmp_path):
    r = measured([sys.executable, "-c", ALLOC], tmp_path / "log")
    assert r["returncode"] == 0
    # parent 100 MiB + child 300 MiB resident at the same time: only the tree sum exceeds 0.38 GiB
    assert 0.38 < r["peak_rss_gib"] < 1.5
    assert r["seconds"] >= 2


def test_scale_world_has_the_requested_pages_and_no_traffic():
    w = scale_world(60, seed=3, single_modal_queries=20)
    pages = {n: len(getattr(w, n).pages) for n in ("pool", "valid", "test")}
    assert sum(pages.values()) == 60 and pages["pool"] == 2 * pages["valid"]
    assert len(w.traffic.pages) == 3 and (w.pool.pages.relevance == -1).all()
