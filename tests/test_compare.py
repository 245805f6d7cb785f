"""Tests of marl.stats (IQM, stratified bootstrap) and marl.compare (run comparison)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from marl import compare as cmp
from marl import stats
from marl.errors import MarlError

# ------------------------------------------------------------------------------------ stats


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (list(range(1, 9)), (3 + 4 + 5 + 6) / 4),  # n=8: middle 4
        ([8, 1, 7, 2, 6, 3, 5, 4], 4.5),  # order does not matter
        ([1, 2, 3, 4, 100], 3.0),  # n=5: int(1.25)=1 cut each side -> [2, 3, 4]
        ([1, 2, 3, 4], 2.5),  # n=4: middle 2
        ([1.0, 2.0, 30.0], 11.0),  # n=3: nothing trimmed
        ([7.0], 7.0),
        (list(range(10)), (2 + 3 + 4 + 5 + 6 + 7) / 6),  # n=10: 2 cut each side
        ([0, 0, 1, 2, 3, 50, 60], (0 + 1 + 2 + 3 + 50) / 5),  # n=7: 1 cut each side
        ([[1, 2], [3, 4], [5, 6], [7, 8]], 4.5),  # axis=None flattens
    ],
)
def test_iqm_known_values(x, expected):
    assert stats.iqm(x) == pytest.approx(expected)


def test_iqm_axis_and_empty():
    a = np.array([[1, 2, 3, 4, 100], [5, 5, 5, 5, 5]], dtype=float)
    np.testing.assert_allclose(stats.iqm(a, axis=-1), [3.0, 5.0])
    np.testing.assert_allclose(stats.iqm(a.T, axis=0), [3.0, 5.0])
    with pytest.raises(ValueError):
        stats.iqm([])


def test_aggregates_follow_rliable_matrix_convention():
    m = np.array([[1.0, 10.0, 100.0], [3.0, 30.0, 300.0]])  # [runs=2, tasks=3]
    tasks = stats.as_tasks(m)
    assert len(tasks) == 3
    assert stats.aggregate_mean(tasks) == pytest.approx(np.mean([2.0, 20.0, 200.0]))
    assert stats.aggregate_median(tasks) == pytest.approx(20.0)
    assert stats.aggregate_iqm(tasks) == pytest.approx(stats.iqm(m))
    gap = stats.optimality_gap(1.0)
    assert gap([np.array([0.5, 1.5])]) == pytest.approx(0.25)


def test_bootstrap_ci_contains_point_and_is_deterministic():
    rng = np.random.default_rng(1)
    scores = {"a": rng.normal(10, 2, size=10), "b": rng.normal(12, 2, size=10)}
    ci = stats.stratified_bootstrap_ci(scores, "iqm", reps=2000, rng=3)
    assert ci.low <= ci.point <= ci.high
    assert ci.low < ci.high
    assert stats.stratified_bootstrap_ci(scores, "iqm", reps=2000, rng=3) == ci
    assert stats.stratified_bootstrap_ci(scores, "iqm", reps=2000, rng=4) != ci
    gen = np.random.default_rng(3)
    assert stats.stratified_bootstrap_ci(scores, "iqm", reps=2000, rng=gen) == ci
    for name in ("mean", "median"):
        c = stats.stratified_bootstrap_ci(scores, name, reps=500, rng=0)
        assert c.low <= c.point <= c.high


def test_bootstrap_ci_shrinks_with_more_runs():
    rng = np.random.default_rng(0)
    few = stats.stratified_bootstrap_ci({"t": rng.normal(0, 1, 5)}, "mean", 2000, rng=0)
    many = stats.stratified_bootstrap_ci({"t": rng.normal(0, 1, 200)}, "mean", 2000, rng=0)
    assert many.high - many.low < 0.5 * (few.high - few.low)


def test_bootstrap_is_stratified_per_task():
    scores = {"single": [5.0], "lo": [0.0, 1.0, 2.0], "hi": [100.0, 101.0, 102.0]}
    boot = stats.stratified_bootstrap(scores, lambda t: t[0][..., 0], reps=300, rng=0)
    np.testing.assert_array_equal(boot, 5.0)  # one run: the same value every replicate
    # every replicate keeps 3 runs of "lo": a pooled bootstrap would vary this count
    count = stats.stratified_bootstrap(
        scores, lambda t: np.sum(np.concatenate(t, axis=-1) < 50, axis=-1), reps=300, rng=0
    )
    np.testing.assert_array_equal(count, 4)
    one_run = stats.stratified_bootstrap_ci({"a": [1.0], "b": [3.0]}, "mean", reps=100, rng=0)
    assert one_run == stats.Interval(2.0, 2.0, 2.0)


def test_bootstrap_input_forms_and_non_vectorized_agree():
    m = np.arange(12, dtype=float).reshape(4, 3) ** 1.5
    as_dict = {j: m[:, j] for j in range(3)}
    a = stats.stratified_bootstrap_ci(m, "iqm", reps=400, rng=7)
    assert stats.stratified_bootstrap_ci(as_dict, "iqm", reps=400, rng=7) == a
    b = stats.stratified_bootstrap_ci(
        as_dict, lambda t: stats.iqm(np.concatenate(t)), reps=400, rng=7, vectorized=False
    )
    assert b == pytest.approx(a)
    with pytest.raises(ValueError, match="unknown statistic"):
        stats.stratified_bootstrap_ci(m, "nope")


def test_probability_of_improvement():
    x = [np.array([5.0, 6.0, 7.0])]
    y = [np.array([1.0, 2.0])]
    assert stats.probability_of_improvement(x, y) == pytest.approx(1.0)
    assert stats.probability_of_improvement(y, x) == pytest.approx(0.0)
    assert stats.probability_of_improvement(x, x) == pytest.approx(0.5)
    ci = stats.probability_of_improvement_ci(
        {"t": [1.0, 2.0, 3.0, 4.0]}, {"t": [2.5, 3.5, 0.5, 1.5]}, reps=500, rng=0
    )
    assert 0.0 <= ci.low <= ci.point <= ci.high <= 1.0


# ---------------------------------------------------------------------------------- helpers


def make_run(
    root: Path,
    experiment: str,
    algo: str,
    env: str,
    curves: list[list[float]],
    *,
    absolute: list[float] | None = None,
    steps: list[int] | None = None,
    run_id: str = "run1",
    win_rate: bool = False,
) -> Path:
    """A synthetic run directory; ``curves[seed]`` are the eval returns at ``steps``."""
    d = root / experiment / run_id
    d.mkdir(parents=True)
    n = len(curves)
    (d / "config.yaml").write_text(
        f"experiment: {experiment}\nseed: 3\nnum_seeds: {n}\n"
        f"algo:\n  name: {algo}\n  lr: 0.0003\nenv:\n  name: {env}\n"
    )
    metrics, evals = [], []
    for s, curve in enumerate(curves):
        st = steps or [1000 * (k + 1) for k in range(len(curve))]
        for k, (step, v) in enumerate(zip(st, curve, strict=True)):
            metrics.append(
                {"seed": s, "update": k, "env_steps": step, "train/episode_return": v - 1,
                 "train/win_rate": None, "loss/actor": 0.1, "perf/sps": 1e4}
            )  # fmt: skip
            evals.append(
                {"seed": s, "update": k, "env_steps": step, "eval/episode_return": v,
                 "eval/episode_return_std": 0.5, "eval/win_rate": 0.5 if win_rate else None,
                 "eval/episode_length": 25.0, "episodes": 8}
            )  # fmt: skip
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (d / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    final: dict = {
        "final": [{"seed": s, "eval/episode_return": c[-1]} for s, c in enumerate(curves)]
    }
    if absolute is not None:
        final["absolute"] = [
            {"seed": s, "eval/episode_return": v, "eval/win_rate": None, "episodes": 80}
            for s, v in enumerate(absolute)
        ]
    (d / "final.json").write_text(json.dumps(final))
    return d


def two_algos(tmp_path: Path, absolute: bool = True) -> list[Path]:
    good = [[1.0, 5.0, 10.0], [2.0, 6.0, 20.0], [1.0, 7.0, 30.0], [3.0, 8.0, 40.0]]
    bad = [[0.0, 1.0, 1.0], [0.0, 1.0, 2.0], [0.0, 2.0, 3.0], [1.0, 2.0, 4.0]]
    return [
        make_run(tmp_path, "good", "mappo", "mpe/simple_spread", good,
                 absolute=[10.0, 20.0, 30.0, 40.0] if absolute else None),
        make_run(tmp_path, "bad", "ippo", "mpe/simple_spread", bad,
                 absolute=[1.0, 2.0, 3.0, 4.0] if absolute else None),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------- compare


def test_compare_two_algorithms_writes_outputs(tmp_path):
    out = tmp_path / "out"
    res = cmp.compare(two_algos(tmp_path / "runs"), out, reps=2000, seed=0)
    assert res.source == "absolute"
    assert not res.normalized
    assert [r.algorithm for r in res.rows] == ["mappo", "ippo"]
    best, worst = res.rows
    assert best.iqm.point == pytest.approx(25.0)  # n=4: mean of the middle 20, 30
    assert best.mean.point == pytest.approx(25.0)
    assert worst.iqm.point == pytest.approx(2.5)
    assert best.num_runs == 4 and best.tasks == ["mpe/simple_spread"]
    for r in res.rows:
        assert r.iqm.low <= r.iqm.point <= r.iqm.high
    assert 10.0 <= best.iqm.low and best.iqm.high <= 40.0
    assert res.improvement == [{"x": "mappo", "y": "ippo", "point": 1.0, "low": 1.0, "high": 1.0}]
    curve = res.curves["mappo"]
    assert curve.steps == [1000, 2000, 3000] and not curve.interpolated
    assert curve.iqm[0] == pytest.approx(1.5)  # IQM of [1, 2, 1, 3]
    assert curve.iqm[-1] == pytest.approx(25.0)

    png = out / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1024
    data = json.loads((out / "compare.json").read_text())
    assert data["aggregate"][0]["algorithm"] == "mappo"
    assert data["aggregate"][0]["iqm"]["point"] == pytest.approx(25.0)
    assert data["curves"]["ippo"]["steps"] == [1000, 2000, 3000]
    assert data["per_task"]["ippo"]["mpe/simple_spread"]["scores"] == [1.0, 2.0, 3.0, 4.0]
    md = (out / "compare.md").read_text()
    assert "| mappo | mpe/simple_spread | 4 | 25 |" in md
    assert (out / "marl_eval.json").is_file()
    assert set(res.paths) == {"png", "json", "md", "marl_eval"}

    again = cmp.compare(two_algos(tmp_path / "runs2"), None, reps=2000, seed=0, write=False)
    assert [r.iqm for r in again.rows] == [r.iqm for r in res.rows]  # deterministic
    assert again.paths == {}


def test_compare_falls_back_to_last_evaluation(tmp_path):
    dirs = two_algos(tmp_path, absolute=True)
    final = json.loads((dirs[1] / "final.json").read_text())
    del final["absolute"]
    (dirs[1] / "final.json").write_text(json.dumps(final))
    res = cmp.compare(dirs, None, reps=200, write=False)
    assert res.source == "final"
    ippo = next(r for r in res.rows if r.algorithm == "ippo")
    assert ippo.iqm.point == pytest.approx(2.5)  # last evals 1, 2, 3, 4
    mappo = next(r for r in res.rows if r.algorithm == "mappo")
    assert mappo.iqm.point == pytest.approx(25.0)


def test_compare_two_envs_normalizes_and_groups_by_algo(tmp_path):
    root = tmp_path / "runs"
    dirs = [
        make_run(root, "a1", "mappo", "mpe/simple_spread", [[0, 10]] * 3, absolute=[10, 10, 10]),
        make_run(root, "a2", "mappo", "mpe/simple_tag", [[0, 100]] * 3, absolute=[100, 90, 80]),
        make_run(root, "b1", "ippo", "mpe/simple_spread", [[0, 5]] * 3, absolute=[0, 0, 0]),
        make_run(root, "b2", "ippo", "mpe/simple_tag", [[0, 50]] * 3, absolute=[0, 0, 0]),
    ]
    res = cmp.compare(dirs, tmp_path / "out", reps=300, optimality_threshold=1.0)
    assert res.normalized
    assert res.normalization["mpe/simple_tag"] == {"min": 0.0, "max": 100.0}
    rows = {r.algorithm: r for r in res.rows}
    assert rows["mappo"].tasks == ["mpe/simple_spread", "mpe/simple_tag"]
    assert rows["mappo"].num_runs == 6
    # normalised: spread [1, 1, 1], tag [1, .9, .8] -> pooled IQM of 6 = mean of middle 4
    assert rows["mappo"].iqm.point == pytest.approx(np.mean([0.9, 1.0, 1.0, 1.0]))
    assert rows["ippo"].iqm.point == pytest.approx(0.0)
    assert rows["ippo"].optimality_gap.point == pytest.approx(1.0)
    assert res.per_task["mappo"]["mpe/simple_tag"]["mean"] == pytest.approx(90.0)
    assert res.rows[0].algorithm == "mappo"


def test_compare_interpolates_when_steps_differ(tmp_path):
    d = make_run(tmp_path, "e", "mappo", "x", [[0.0, 1.0, 2.0, 3.0]], steps=[0, 10, 20, 30])
    d2 = make_run(tmp_path, "e", "mappo", "x", [[0.0, 2.0, 4.0]], steps=[5, 15, 25], run_id="run2")
    res = cmp.compare([tmp_path / "e"], None, reps=100, write=False)  # a folder of runs
    assert {r["path"] for r in res.runs} == {str(d), str(d2)}
    curve = res.curves["mappo"]
    assert curve.interpolated
    assert curve.steps[0] == 5 and curve.steps[-1] == 25
    assert any("interpolated" in n for n in res.notes)


def test_compare_train_metric_and_group_by_experiment(tmp_path):
    dirs = two_algos(tmp_path)
    res = cmp.compare(dirs, None, metric="train/episode_return", reps=100, write=False)
    assert res.source == "train"
    assert {r.algorithm: r.iqm.point for r in res.rows}["ippo"] == pytest.approx(1.5)
    res = cmp.compare(dirs, None, reps=100, group_by="experiment", write=False)
    assert {r.algorithm for r in res.rows} == {"good", "bad"}


def test_errors_name_the_missing_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MarlError, match="config.yaml"):
        cmp.load_run(empty)
    with pytest.raises(MarlError, match="config.yaml"):
        cmp.compare([empty], None, write=False)
    with pytest.raises(MarlError, match="not found"):
        cmp.compare([tmp_path / "nope"], None, write=False)

    d = make_run(tmp_path, "e", "mappo", "x", [[1.0, 2.0]])
    for f in ("eval.jsonl", "final.json"):
        (d / f).unlink()
    with pytest.raises(MarlError, match=r"eval\.jsonl and final\.json missing"):
        cmp.compare([d], None, write=False)
    (d / "metrics.jsonl").unlink()
    with pytest.raises(MarlError, match="metrics.jsonl"):
        cmp.load_run(d)

    d2 = make_run(tmp_path, "f", "mappo", "x", [[1.0, 2.0]])
    (d2 / "config.yaml").write_text("experiment: f\nenv:\n  name: x\n")
    with pytest.raises(MarlError, match="algo.name"):
        cmp.load_run(d2)


def test_truncated_last_jsonl_line_is_tolerated(tmp_path):
    d = make_run(tmp_path, "e", "mappo", "x", [[1.0, 2.0, 3.0], [1.0, 2.0, 5.0]])
    with (d / "eval.jsonl").open("a") as f:
        f.write('{"seed": 0, "update": 3, "env_steps": 4000, "eval/episode_ret')
    with (d / "metrics.jsonl").open("a") as f:
        f.write('{"seed": 1, "upd\n\n')
    run = cmp.load_run(d)
    assert len(run.evals) == 6 and len(run.metrics) == 6
    assert len(run.warnings) == 2 and "truncated" in run.warnings[0]
    res = cmp.compare([d], None, reps=100, write=False)
    assert res.rows[0].mean.point == pytest.approx(4.0)
    assert any("truncated" in n for n in res.notes)

    lines = (d / "eval.jsonl").read_text().splitlines()
    lines[1] = "{broken"
    (d / "eval.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(MarlError, match="line 2"):
        cmp.load_run(d)


def test_marl_eval_json_structure(tmp_path):
    d = make_run(
        tmp_path, "e", "mappo", "mpe/simple_spread", [[1.0, 2.0], [3.0, 4.0]],
        absolute=[2.5, 4.5], win_rate=False,
    )  # fmt: skip
    data = cmp.to_marl_eval_json(d)
    assert list(data) == ["mpe"]
    seeds = data["mpe"]["simple_spread"]["mappo"]
    assert list(seeds) == ["seed_0", "seed_1"]
    s1 = seeds["seed_1"]
    assert list(s1) == ["step_0", "step_1", "absolute_metrics"]  # absolute last
    assert s1["step_0"] == {"step_count": 1000, "episode_return": [3.0], "episode_length": [25.0]}
    assert s1["step_1"]["step_count"] == 2000 and s1["step_1"]["episode_return"] == [4.0]
    assert s1["absolute_metrics"] == {"episode_return": [4.5]}  # null win rate left out

    w = make_run(tmp_path, "w", "ippo", "smax", [[1.0]], win_rate=True)
    wd = cmp.to_marl_eval_json(w)
    step = wd["smax"]["smax"]["ippo"]["seed_0"]["step_0"]
    assert step["win_rate"] == [0.5]
    assert "absolute_metrics" not in wd["smax"]["smax"]["ippo"]["seed_0"]
    fb = cmp.to_marl_eval_json(w, absolute_fallback=True, env_name="SMAX", task_name="3m")
    assert fb["SMAX"]["3m"]["ippo"]["seed_0"]["absolute_metrics"]["episode_return"] == [1.0]

    d2 = make_run(tmp_path, "e", "mappo", "mpe/simple_spread", [[9.0]], run_id="run2")
    path = cmp.write_marl_eval_json([tmp_path / "e"], tmp_path / "me.json")
    merged = json.loads(path.read_text())
    assert list(merged["mpe"]["simple_spread"]["mappo"]) == ["seed_0", "seed_1", "seed_2"]
    assert d2.is_dir()


def test_render_table_and_cli(tmp_path, capsys):
    from rich.console import Console
    from rich.table import Table

    dirs = two_algos(tmp_path / "runs")
    res = cmp.compare(dirs, None, reps=100, write=False)
    table = cmp.render_table(res)
    assert isinstance(table, Table) and table.row_count == 2
    console = Console(width=200, record=True)
    console.print(table)
    assert "mappo" in console.export_text()

    out = tmp_path / "cli-out"
    assert cmp.cli([str(d) for d in dirs], str(out), "eval/episode_return", reps=100) == 0
    printed = capsys.readouterr().out
    assert "mappo" in printed and str(out / "compare.png") in printed.replace("\n", "")
    assert (out / "compare.md").is_file()
