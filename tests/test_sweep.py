"""Sweeps (`marl train -m`) through Hydra's launchers and sweepers, the sweep index, `marl
compare` and `marl dashboard` on a sweep, and the W&B workspace spec."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from tiny import QUIET, TINY

from marl.cli import main
from marl.sweep import _parallel_jobs, _Slot, cpu_share, pin_process, read_index

JOB = [*TINY, *QUIET]  # the tests' shared tiny config (compiled once)


def _sweep_dir(out: str) -> Path:
    return Path(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2-job grid in this process: one job trains, the other fails in training (a keyword
    outside the family's variants passes the config check and fails when the env is built)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("sweeps")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["train", "-m", *JOB, f"logger.root={root}", "env.kwargs.N=3,99"])
    return code, _sweep_dir(buf.getvalue()), root


def test_sweep_runs_every_job_and_marks_the_failed_one(sweep):
    code, sweep_dir, root = sweep
    assert code == 1  # a job failed: the sweep went on, and says so in its exit code
    assert sweep_dir.parent == root / "sweep" and sweep_dir.name.startswith("sweep-")
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    assert meta["swept"] == ["env.kwargs.N"] and meta["num_jobs"] == 2
    jobs = json.loads((sweep_dir / "index.json").read_text())["jobs"]
    assert [j["job"] for j in jobs] == [0, 1]
    ok, failed = jobs
    assert ok["status"] == "ok" and "++env.kwargs.N=3" in ok["overrides"]
    assert ok["label"] == "env.kwargs.N=3" and isinstance(ok["objective"], float)
    assert failed["status"] == "failed" and "++env.kwargs.N=99" in failed["overrides"]
    assert "N=99 is not one of its variants" in failed["error"]
    assert "ConfigError" in (sweep_dir / "1" / "error.txt").read_text()
    # each job is an ordinary run directory, in the sweep's W&B group with its swept tags
    run = sweep_dir / "0"
    for f in ("config.yaml", "metrics.jsonl", "eval.jsonl", "final.json"):
        assert (run / f).is_file(), f
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["env"]["kwargs"]["N"] == 3
    assert cfg["logger"]["wandb"]["group"] == meta["name"]
    assert cfg["logger"]["wandb"]["tags"] == [f"sweep={meta['name']}", "env.kwargs.N=3"]
    final = json.loads((run / "final.json").read_text())
    assert ok["objective"] == pytest.approx(final["final"][0]["eval/episode_return"])
    assert read_index(sweep_dir) == jobs


def test_compare_and_dashboard_of_a_sweep(sweep, tmp_path, capsys):
    from marl.compare import compare
    from marl.dashboard import build

    _, sweep_dir, _ = sweep
    # a second finished job with another swept value: a copy of job 0, relabelled
    copy = tmp_path / sweep_dir.name
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    index = json.loads((copy / "index.json").read_text())
    index["swept"] = ["algo.lr", "seed"]
    index["jobs"][1] = {
        **index["jobs"][0],
        "job": 1,
        "run_dir": str(copy / "1"),
        "overrides": ["algo.lr=0.003", "seed=0"],
        "label": "algo.lr=0.003",
    }
    index["jobs"][0]["label"] = "algo.lr=0.001"
    (copy / "index.json").write_text(json.dumps(index))
    (copy / "sweep.json").write_text(json.dumps({k: v for k, v in index.items() if k != "jobs"}))
    shutil.rmtree(copy / "1")
    shutil.copytree(copy / "0", copy / "1")

    result = compare([copy], tmp_path / "cmp")
    assert sorted(r.algorithm for r in result.rows) == ["algo.lr=0.001", "algo.lr=0.003"]
    # the real sweep: its failed job is left out with a note naming it
    result = compare([sweep_dir], write=False)
    assert [r.algorithm for r in result.rows] == ["env.kwargs.N=3"]
    assert any("job 1 (" in n and "++env.kwargs.N=99" in n and "failed" in n for n in result.notes)

    board = build([copy])
    assert board.groups == [index["name"]] and board.group_by == ["algo.lr"]
    assert list(board.sections) == ["Returns", "Losses", "Speed", "Comparison"]
    assert board.sections["Returns"] == ["eval/episode_return", "train/episode_return"]
    assert "loss/actor" in board.sections["Losses"] and board.sections["Speed"] == ["perf/sps"]
    spec = board.spec()["spec"]["section"]
    runset = spec["runSets"][0]
    assert runset["filters"]["filters"][0]["value"] == [index["name"]]  # the sweep's group
    assert runset["grouping"] == [{"section": "config", "name": "algo.value.lr"}]
    assert spec["settings"]["xAxis"] == "env_steps"
    panels = {
        p["config"].get("chartTitle"): p
        for s in spec["panelBankConfig"]["sections"]
        for p in s["panels"]
    }
    ret = panels["eval/episode_return"]["config"]
    assert ret["xAxis"] == "env_steps" and ret["metrics"] == ["eval/episode_return"]
    assert ret["groupBy"] == "algo.value.lr"
    table = next(p for p in panels.values() if p["viewType"] == "Markdown Panel")
    assert "algo.lr=0.001" in table["config"]["value"]  # the comparison table

    # the command: offline, it writes the spec and says how to publish
    assert main(["dashboard", str(copy), "--out", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "To publish" in out and "--publish" in out
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["group_by"] == ["algo.lr"] and doc["view"]["project"] == "marl"


def test_dashboard_of_an_experiment_groups_by_algorithm_with_win_rate(tmp_path):
    from marl.dashboard import build

    exp = tmp_path / "runs" / "exp"
    for algo, win in (("ippo", 0.5), ("mappo", 0.75)):
        run = exp / f"{algo}-run"
        run.mkdir(parents=True)
        cfg = {
            "experiment": "exp",
            "seed": 0,
            "num_seeds": 1,
            "algo": {"name": algo},
            "env": {"name": "smax/3m"},
            "logger": {"wandb": {"project": "p", "entity": "team", "group": None}},
        }
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        row = {"seed": 0, "update": 1, "env_steps": 100, "loss/actor": 0.1, "perf/sps": 9.0}
        (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        ev = {"seed": 0, "update": 1, "env_steps": 100, "eval/episode_return": win * 10}
        (run / "eval.jsonl").write_text(json.dumps({**ev, "eval/win_rate": win}) + "\n")
    board = build([exp])
    assert board.entity == "team" and board.project == "p" and board.groups == ["exp"]
    assert board.group_by == ["algo.name"]
    assert board.sections["Win rate"] == ["eval/win_rate"]
    runset = board.spec()["spec"]["section"]["runSets"][0]
    assert runset["grouping"] == [{"section": "config", "name": "algo.value.name"}]


def test_a_bad_job_stops_the_sweep_before_anything_runs(tmp_path, capsys):
    args = ["train", "-m", *JOB, f"logger.root={tmp_path}", "algo=ippo,mapo"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "sweep job algo=mapo" in err and "unknown algo 'mapo'" in err
    assert not any(tmp_path.iterdir())  # no sweep directory
    assert main(["train", "--jobs", "2", "seed=1"]) == 2
    assert "use them with -m" in capsys.readouterr().err
    assert main([*args[:-1], "seed=0,1", "hydra.sweep.dir=runs/${now:%H}"]) == 2
    assert "give a plain path" in capsys.readouterr().err


def test_slurm_job_script_of_a_sweep(tmp_path, capsys):
    args = [
        "train",
        "-m",
        "--dry-run",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=cpu",
        "hydra.launcher.cpus_per_task=4",
        "hydra.launcher.timeout_min=45",
        "hydra.launcher.array_parallelism=2",
        "algo=ippo,mappo",
        "seed=0,1,2",
        f"logger.root={tmp_path}",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    jobs = [line for line in out.splitlines() if line.startswith("#") and ": " in line]
    assert len(jobs) == 6 and jobs[0].startswith("#0: algo=ippo seed=0")
    script = out[out.index("#!/bin/bash") :]
    for line in (
        "#SBATCH --array=0-5%2",  # one array job of the 6 runs, 2 at a time
        "#SBATCH --partition=cpu",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --time=45",
        "#SBATCH --job-name=train",
    ):
        assert line in script, line
    assert "srun" in script and "-m submitit.core._submit" in script
    assert f"{tmp_path}/sweep/sweep-" in script  # logs under the sweep directory
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_parallel_slots_and_core_shares(tmp_path):
    assert cpu_share(0, 2, [0, 1, 2, 3]) == [0, 1]
    assert cpu_share(1, 2, [0, 1, 2, 3]) == [2, 3]
    assert cpu_share(2, 3, [4, 5, 6, 7, 8, 9]) == [8, 9]
    assert cpu_share(3, 4, [0, 1]) == [1]  # more jobs than cores: round-robin
    a, b = _Slot(tmp_path, 2), _Slot(tmp_path, 2)
    assert {a.index, b.index} == {0, 1}  # two running jobs never share a slot
    a.release()
    c = _Slot(tmp_path, 2)
    assert c.index == a.index
    b.release(), c.release()
    joblib = "hydra_plugins.hydra_joblib_launcher.X"
    assert _parallel_jobs({"_target_": joblib, "n_jobs": 3}, [0, 1]) == 3
    assert _parallel_jobs({"_target_": joblib, "n_jobs": -1}, [0, 1, 2, 3]) == 4
    assert _parallel_jobs({"_target_": "hydra._internal.BasicLauncher"}, [0, 1]) == 1
    before = os.sched_getaffinity(0)
    one = [min(before)]
    try:
        pin_process(one)
        assert os.sched_getaffinity(0) == set(one)
    finally:
        pin_process(sorted(before))
    assert os.sched_getaffinity(0) == before


def test_submitit_local_launcher_runs_jobs_in_other_processes(tmp_path, capsys):
    args = ["train", "-m", "hydra/launcher=submitit_local", *JOB, f"logger.root={tmp_path}"]
    assert main([*args, "seed=5"]) == 0
    sweep_dir = _sweep_dir(capsys.readouterr().out)
    (job,) = read_index(sweep_dir)
    assert job["status"] == "ok" and job["pid"] != os.getpid()  # submitit's own process
    assert json.loads((sweep_dir / "0" / "final.json").read_text())["updates"] == 16
    assert (sweep_dir / ".submitit").is_dir()


def test_optuna_sweeper_maximises_the_evaluation_return(tmp_path, capsys):
    # the search space is the seed here (an argument of the compiled programs, so both
    # trials run the same programs); a real search names hyper-parameters the same way,
    # e.g. 'algo.lr=tag(log,interval(1e-5,1e-2))'
    args = [
        "train",
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=0",
        "seed=int(interval(0,1000))",
        *JOB,
        f"logger.root={tmp_path}",
    ]
    assert main(args) == 0
    sweep_dir = _sweep_dir(capsys.readouterr().out)
    jobs = read_index(sweep_dir)
    assert [j["status"] for j in jobs] == ["ok", "ok"]
    seeds = [int(next(o for o in j["overrides"] if o.startswith("seed="))[5:]) for j in jobs]
    assert all(0 <= s <= 1000 for s in seeds) and seeds[0] != seeds[1]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(j["objective"] for j in jobs))
    assert best["best_params"]["seed"] in seeds
    assert json.loads((sweep_dir / "sweep.json").read_text())["swept"] == ["seed"]


def test_a_requeued_job_resumes_its_run_directory(sweep, tmp_path, capsys):
    """Slurm requeues a pre-empted job into the same directory: the job resumes its run."""
    _, sweep_dir, root = sweep
    copy = tmp_path / "requeued"
    shutil.copytree(sweep_dir, copy)
    (copy / "index.jsonl").unlink()
    before = json.loads((copy / "0" / "final.json").read_text())
    args = ["train", "-m", *JOB, f"logger.root={root}", "env.kwargs.N=3"]
    assert main([*args, f"hydra.sweep.dir={copy}"]) == 0
    (job,) = read_index(copy)
    assert job["status"] == "ok" and job["resumed"] is True
    after = json.loads((copy / "0" / "final.json").read_text())
    assert after["updates"] == before["updates"] == 16  # no update trained twice
    assert after["final"] == before["final"]  # the same last evaluation, re-run
    assert "resuming" in capsys.readouterr().err
    # another sweep launched into the same directory never takes over its runs
    assert main([*args, "algo.lr=0.001", f"hydra.sweep.dir={copy}"]) == 1
    (job,) = read_index(copy)
    assert job["status"] == "failed" and "holds another run" in job["error"]
    assert "algo" in job["error"] and list(copy.glob("index-*.jsonl"))  # the old index kept
    assert json.loads((copy / "0" / "final.json").read_text()) == after  # untouched


def test_a_running_sweep_is_read_with_labels(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "s", "swept": ["algo.lr", "seed"]}))
    lines = [
        {"job": 1, "overrides": ["algo.lr=0.003", "seed=1"], "run_dir": "1", "status": "ok"},
        {"job": 0, "overrides": ["algo.lr=0.001", "seed=0"], "run_dir": "0", "status": "ok"},
    ]
    (tmp_path / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = read_index(tmp_path)  # no index.json yet: the driver is still running
    assert [(r["job"], r["label"]) for r in rows] == [(0, "algo.lr=0.001"), (1, "algo.lr=0.003")]
