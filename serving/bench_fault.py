"""The fault part of `smar bench serve` (serving.bench): a malformed load with hot swaps against the
running app, every bad class checked with `curl`, and its pass/fail summary.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np

from serving.bench_load import finish, loadgen, write_specs


def curl_bad_inputs(url: str, bodies: list[dict], n_max: int, folder: Path) -> dict:
    """Each bad class through `curl` (a client from outside the project): {class: [got, expected]}."""
    from serving.malformed import bad_cases, body_text

    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    for k, (name, (make, status, _)) in enumerate(sorted(bad_cases(n_max).items())):
        f = folder / f"{name}.json"
        f.write_text(body_text(make(bodies[k % len(bodies)])))
        got = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "content-type: application/json",
                "--data-binary",
                f"@{f}",
                f"{url}/rank",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        out[name] = [int(got) if got.isdigit() else got, status]
    return out


def fault_load(
    url: str,
    bodies: list[dict],
    seconds: float,
    out: Path,
    swap_versions: tuple[str, str],
    concurrency: int = 32,
    n_max: int = 64,
) -> dict:
    """`seconds` of load at `concurrency`, 10 % malformed of every class, two hot swaps (at 1/3 and
    2/3 of it: to the second version and back), `curl` checks of every bad class meanwhile."""
    from serving import deploy
    from serving.malformed import mixed_specs

    specs = write_specs(out / "fault_specs.json", mixed_specs(bodies, n_max))
    proc = loadgen(url, specs, concurrency, duration_s=seconds, warmup=0, cover=True)  # every class sent
    t0 = time.monotonic()
    swaps = []
    for k, version in enumerate(swap_versions):
        time.sleep(max(0.0, t0 + seconds * (k + 1) / 3 - time.monotonic()))
        ts = time.monotonic() - t0
        deploy.apply_version(version, url=url, timeout_s=max(30.0, seconds / 3))
        swaps.append(
            {"version": version, "at_s": round(ts, 1), "live_after_s": round(time.monotonic() - t0 - ts, 2)}
        )
    curl = curl_bad_inputs(url, bodies, n_max, out / "curl_bodies")
    res = finish(proc)
    return summarize_fault_load(res, swaps, curl)


def summarize_fault_load(res: dict, swaps: list[dict], curl: dict) -> dict:
    """Pass/fail figures of a malformed load: no 5xx, every malformed request its 4xx, every valid one 200."""
    from serving.malformed import bad_cases

    expect = {name: st for name, (_, st, _) in bad_cases(1).items()}
    valid = res["classes"].get("valid", {"status": {}, "lat_ms": []})
    lat = np.asarray([x for c in res["classes"].values() for x in c["lat_ms"]] or [np.nan])
    n5xx = sum(
        v for c in res["classes"].values() for k, v in c["status"].items() if k.isdigit() and int(k) >= 500
    )
    bad = {k: v for k, v in res["classes"].items() if k != "valid"}
    wrong = {k: v["status"] for k, v in bad.items() if set(v["status"]) != {str(expect[k])}}
    missing = sorted(set(expect) - set(bad))
    failed_valid = sum(v for k, v in valid["status"].items() if k != "200")
    n = sum(sum(c["status"].values()) for c in res["classes"].values())
    return {
        "seconds": res["wall_s"],
        "concurrency": res["concurrency"],
        "requests": n,
        "rps": n / res["wall_s"],
        "malformed": sum(sum(c["status"].values()) for c in bad.values()),
        "malformed_classes": len(bad),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "valid_p50_ms": float(np.percentile(valid["lat_ms"] or [np.nan], 50)),
        "valid_p99_ms": float(np.percentile(valid["lat_ms"] or [np.nan], 99)),
        "n_5xx": n5xx,
        "connection_errors": res["n_conn_errors"],
        "failed_valid_requests": failed_valid,
        "malformed_not_their_4xx": wrong,
        "classes_never_sent": missing,
        "status_by_class": {k: v["status"] for k, v in res["classes"].items()},
        "swaps": swaps,
        "curl": curl,
        "curl_all_4xx_as_expected": all(got == want for got, want in curl.values()),
        "ok": n5xx == 0
        and not wrong
        and failed_valid == 0
        and res["n_conn_errors"] == 0
        and len(bad) == len(expect)
        and all(got == want for got, want in curl.values()),
    }
