"""The speed-benchmark harness (``marl/bench.py``): quick mode of a small subset, JSON shape.

No timing assertions: only that the harness runs, writes the documented structure, and that
every measured number is positive and finite.
"""

from __future__ import annotations

import json
import math

from marl import bench


def _numbers(x):
    if isinstance(x, bool):
        return
    if isinstance(x, int | float):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _numbers(v)


def _positive(x, what):
    vals = list(_numbers(x))
    assert vals, what
    for v in vals:
        assert math.isfinite(v) and v > 0, (what, v)


def test_quick_subset_writes_json(tmp_path, capsys):
    out = tmp_path / "speed.json"
    argv = ["--quick", "--only", "env,pz", "--env-names", "mpe/simple_spread", "--out", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Pure-JAX stepping" in printed and "Targets" in printed
    res = json.loads(out.read_text())

    assert res["meta"]["quick"] is True and res["meta"]["repeats"] >= 3
    assert res["meta"]["sections"] == ["env", "pz"]
    m = res["machine"]
    assert m["cpu_model"] and m["cpu_count"] >= 1 and m["jax_backend"]
    for pkg in ("jax", "jaxlib", "jaxmarl", "flax"):
        assert m["versions"][pkg]

    assert [r["env"] for r in res["env"]] == ["mpe/simple_spread"]
    for r in res["env"]:
        assert r["num_envs"] >= 1 and r["scan_len"] >= 1
        for side in ("raw", "ours"):
            assert len(r[side]["times_s"]) >= 3
            _positive(r[side], side)
        assert r["ratio"] > 0

    (pz,) = res["pettingzoo"]
    assert pz["num_envs"] == 8
    assert pz["plain_loop"]["steps"] > 0 and pz["plain_loop"]["resets"] >= 0
    for k in ("bridge_sync", "bridge_async_2", "policy_in_loop"):
        _positive(pz[k], k)
    assert pz["bridge_async_2"]["workers"] == 2
    _positive([pz["ratio_async2_vs_plain"], pz["ratio_async2_vs_sync"]], "ratios")

    keys = {t["key"] for t in res["targets"]}
    assert keys == {"array_view[mpe/simple_spread]", "bridge_2_workers[8]", "policy_in_loop[8]"}
    for t in res["targets"]:
        assert t["status"] in ("PASS", "MISS") and math.isfinite(t["value"]) and t["value"] > 0


def test_targets_from_a_result():
    res = {
        "jaxmarl_baseline": {"steps_per_s": 1000.0},
        "train": [{"label": "ippo mpe jaxmarl-config", "steps_per_s": 2000.0}],
        "compile": {"first_s": 12.0, "cached_s": 1.0},
        "scaling": {
            "num_seeds": [
                {"num_seeds": 1, "wall_ratio_vs_1": 1.0},
                {"num_seeds": 8, "wall_ratio_vs_1": 3.0},
            ]
        },
        "search": {
            "rollouts_per_action": 16,
            "rows": [
                {
                    "blueprint": "uniform",
                    "ratio": 1.5,
                    "ours_decisions_per_s": 15.0,
                    "openspiel_decisions_per_s": 10.0,
                }
            ],
        },
    }
    got = {t["key"]: t for t in bench.evaluate_targets(res)}
    assert got["ippo_vs_jaxmarl"]["status"] == "PASS" and got["ippo_vs_jaxmarl"]["value"] == 2.0
    assert got["first_compile"]["status"] == "MISS"
    assert got["cached_launch"]["status"] == "PASS"
    assert got["seeds_8_vs_1"]["status"] == "PASS"
    s = got["search_vs_openspiel[uniform]"]
    assert s["status"] == "MISS" and s["value"] == 1.5 and "16 rollouts per action" in s["detail"]


def test_time_to_target_verdicts():
    base = {"target": -19.8, "smooth": 10}
    ours = {"seconds": 40.0, "wall_s": 90.0}
    res = {"target": {**base, "ours": ours, "jaxmarl": {"seconds": 100.0, "wall_s": 200.0}}}
    (t,) = bench.evaluate_targets(res)
    assert t["key"] == "time_to_target" and t["value"] == 0.4 and t["status"] == "PASS"
    # JaxMARL never reached the target: its whole run is the reference (a lower bound)
    res["target"]["jaxmarl"] = {"seconds": None, "wall_s": 70.0}
    (t,) = bench.evaluate_targets(res)
    assert t["value"] == 40.0 / 70.0 and t["status"] == "MISS" and "did not reach" in t["detail"]


def test_first_reach_uses_the_moving_average():
    vals = [-30.0] * 5 + [-19.0] * 3 + [-25.0] + [-19.0] * 6
    secs = [float(i) for i in range(len(vals))]
    # a 3-update average first reaches -19.8 at index 7 (three -19.0 in a row)
    hit = bench.first_reach(vals, secs, -19.8, 3)
    assert hit == {"update": 8, "seconds": 7.0, "final_smoothed": -19.0}
    assert bench.first_reach(vals, secs, -10.0, 3)["update"] is None
    assert bench.first_reach(vals[:2], secs[:2], -19.8, 3)["update"] is None
