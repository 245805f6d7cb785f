"""Tests of marl.runlog: run directory files, resume, W&B offline/disabled/fallback, plots."""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from marl.runlog import RunLogger, new_run_dir, read_jsonl

CONFIG = {
    "experiment": "smoke",
    "env": {"name": "mpe_simple_spread", "num_envs": 4},
    "algo": {"name": "ippo", "lr": 3e-4},
    "seed": 0,
}
OFFLINE = {"mode": "offline", "project": "marl-tests", "entity": None, "group": None,
           "tags": ["test"], "job_type": "train"}  # fmt: skip
DISABLED = {**OFFLINE, "mode": "disabled"}


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    """Keep W&B quiet, offline by default and out of the home directory."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)


def train_rows(update: int, num_seeds: int = 2) -> list[dict]:
    return [
        {
            "seed": s,
            "update": update,
            "env_steps": update * 128,
            "train/episode_return": float(update + 0.5 * s),
            "loss/policy": 0.1 * update,
        }
        for s in range(num_seeds)
    ]


def eval_rows(update: int, num_seeds: int = 2) -> list[dict]:
    return [
        {
            "seed": s,
            "update": update,
            "env_steps": update * 128,
            "eval/episode_return": float(update + s),
            "eval/win_rate": 0.25 * s,
        }
        for s in range(num_seeds)
    ]


def offline_run_dirs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def run_id_of(offline_dir: Path) -> str:
    """The W&B run id in ``offline-run-<date>_<time>-<id>[-<n>]``."""
    return re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", offline_dir.name)[1]


def test_new_run_dir_unique(tmp_path):
    dirs = {new_run_dir(tmp_path, "exp") for _ in range(20)}
    assert len(dirs) == 20
    for d in dirs:
        assert d.is_dir() and d.parent == tmp_path / "exp"
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", d.name), d.name


def test_files_written(tmp_path):
    run_dir = tmp_path / "smoke" / "run1"
    with RunLogger(run_dir, CONFIG, 2, wandb=DISABLED) as log:
        log.log_train(train_rows(1))
        log.log_train(
            [
                {
                    "seed": 0,
                    "update": 2,
                    "env_steps": np.int64(256),
                    "train/episode_return": float("nan"),
                    "loss/policy": np.float32(np.inf),
                    "loss/value": np.float32(0.5),
                }
            ]
        )
        # flushed on each call: readable while the logger is open
        assert len(read_jsonl(run_dir / "metrics.jsonl")) == 3
        log.log_eval(eval_rows(2))
        log.write_final({"train/episode_return": 2.0, "eval/win_rate": float("-inf")})
        log.write_json("summary", {"a": [1, 2.5, float("nan")]})

    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == CONFIG
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0]) == train_rows(1)[0]
    last = json.loads(lines[2])
    assert last == {
        "seed": 0,
        "update": 2,
        "env_steps": 256,
        "train/episode_return": None,
        "loss/policy": None,
        "loss/value": 0.5,
    }
    assert "NaN" not in (run_dir / "metrics.jsonl").read_text()
    assert read_jsonl(run_dir / "eval.jsonl") == eval_rows(2)
    assert json.loads((run_dir / "final.json").read_text()) == {
        "train/episode_return": 2.0,
        "eval/win_rate": None,
    }
    assert json.loads((run_dir / "summary.json").read_text()) == {"a": [1, 2.5, None]}
    # W&B disabled: no W&B files at all
    assert not (run_dir / "wandb").exists()
    assert not (run_dir / "wandb_ids.json").exists()


def test_resume_truncates_to_update(tmp_path):
    run_dir = tmp_path / "run"
    # the uninterrupted run
    with RunLogger(tmp_path / "ref", CONFIG, 2, wandb=DISABLED) as ref:
        for u in range(1, 6):
            ref.log_train(train_rows(u))
            if u % 2 == 0:
                ref.log_eval(eval_rows(u))
    # a run interrupted after update 5 (with a torn last line) whose checkpoint was update 3
    with RunLogger(run_dir, CONFIG, 2, wandb=DISABLED) as log:
        for u in range(1, 6):
            log.log_train(train_rows(u))
            if u % 2 == 0:
                log.log_eval(eval_rows(u))
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"seed": 0, "update": 6, "env_st')
    with RunLogger(run_dir, CONFIG, 2, wandb=DISABLED, resume_update=3) as log:
        assert [r["update"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 1, 2, 2, 3, 3]
        assert [r["update"] for r in read_jsonl(run_dir / "eval.jsonl")] == [2, 2]
        for u in range(4, 6):
            log.log_train(train_rows(u))
            if u % 2 == 0:
                log.log_eval(eval_rows(u))
    for name in ("metrics.jsonl", "eval.jsonl"):
        assert (run_dir / name).read_text() == (tmp_path / "ref" / name).read_text()


def test_resume_missing_dir_is_an_error(tmp_path):
    from marl.errors import MarlError

    with pytest.raises(MarlError, match="does not exist"):
        RunLogger(tmp_path / "nope", CONFIG, 1, wandb=DISABLED, resume_update=3)


def test_wandb_offline_one_run_per_seed_and_resume(tmp_path):
    run_dir = tmp_path / "smoke" / "20240101-000000-abcdef"
    log = RunLogger(run_dir, CONFIG, 2, wandb=OFFLINE)
    assert log.mode == "offline"
    runs = log.wandb_runs
    assert len(runs) == 2
    assert [r.name for r in runs] == [f"{run_dir.name}/seed0", f"{run_dir.name}/seed1"]
    assert runs[0].group == "smoke"
    assert runs[0].config["seed_index"] == 0 and runs[1].config["seed_index"] == 1
    assert runs[1].config["algo"]["name"] == "ippo"
    for u in (1, 2):
        log.log_train(train_rows(u))
    log.log_eval(eval_rows(2))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "state.bin").write_bytes(b"\0" * 16)
    log.log_artifact(ckpt, "checkpoint step 2")  # must not fail offline
    log.close()
    log.close()  # idempotent

    ids = json.loads((run_dir / "wandb_ids.json").read_text())["ids"]
    assert len(ids) == 2 and ids[0] != ids[1]
    dirs = offline_run_dirs(run_dir)
    assert len(dirs) == 2
    assert sorted(run_id_of(d) for d in dirs) == sorted(ids)
    for d in dirs:
        data = (d / f"run-{run_id_of(d)}.wandb").read_bytes()
        assert b"train/episode_return" in data and b"env_steps" in data
        assert b"eval/episode_return" in data

    # resuming continues the same W&B run ids
    with RunLogger(run_dir, CONFIG, 2, wandb=OFFLINE, resume_update=1) as log2:
        assert [r.id for r in log2.wandb_runs] == ids
        log2.log_train(train_rows(2))
    dirs = offline_run_dirs(run_dir)
    assert len(dirs) == 4
    assert sorted({run_id_of(d) for d in dirs}) == sorted(ids)


def test_online_failure_falls_back_to_offline(tmp_path, monkeypatch):
    # a key W&B accepts locally and a server nobody listens on: init times out quickly
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    cfg = {**OFFLINE, "mode": "online", "init_timeout": 3}
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    with pytest.warns(RuntimeWarning, match="online init failed") as record:
        log = RunLogger(run_dir, CONFIG, 2, wandb=cfg)
    assert time.monotonic() - t0 < 25
    assert sum("online init failed" in str(w.message) for w in record) == 1  # warned once
    assert log.mode == "offline" and len(log.wandb_runs) == 2
    log.log_train(train_rows(1))
    log.close()
    dirs = offline_run_dirs(run_dir)
    ids = json.loads((run_dir / "wandb_ids.json").read_text())["ids"]
    assert sorted(run_id_of(d) for d in dirs) == sorted(ids)
    assert not list((run_dir / "wandb").glob("run-*"))  # no trace of the failed online run


def test_online_without_api_key_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with pytest.warns(RuntimeWarning, match="online init failed"):
        log = RunLogger(tmp_path / "run", CONFIG, 1, wandb={**OFFLINE, "mode": "online"})
    assert log.mode == "offline" and len(log.wandb_runs) == 1
    log.close()
    assert len(offline_run_dirs(tmp_path / "run")) == 1


def test_online_failure_fallback_unit(tmp_path, monkeypatch):
    import wandb

    calls = []
    real_init = wandb.init

    def fake_init(*args, mode=None, **kwargs):
        calls.append(mode)
        if mode == "online":
            raise wandb.errors.CommError("network unreachable")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", fake_init)
    with pytest.warns(RuntimeWarning, match="network unreachable"):
        log = RunLogger(tmp_path / "run", CONFIG, 2, wandb={**OFFLINE, "mode": "online"})
    assert calls == ["online", "offline", "offline"]
    assert log.mode == "offline"
    log.close()


def test_wandb_failure_never_stops_the_run(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning, match="disk full"):
        log = RunLogger(tmp_path / "run", CONFIG, 1, wandb=OFFLINE)
    assert log.mode == "disabled"
    log.log_train(train_rows(1, 1))
    log.log_artifact(tmp_path, "x")
    log.close()
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 1


def test_plot_writes_png(tmp_path):
    run_dir = tmp_path / "run"
    with RunLogger(run_dir, CONFIG, 3, wandb=DISABLED) as log:
        for u in range(1, 11):
            rows = train_rows(u, 3)
            rows[0]["train/episode_return"] = None  # no episode finished for seed 0
            log.log_train(rows)
            if u % 3 == 0:
                log.log_eval(eval_rows(u, 3))
        path = log.plot()
        empty = RunLogger(tmp_path / "empty", {}, 1, wandb=DISABLED).plot()
    for p in (path, empty):
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path == run_dir / "learning_curve.png"
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not math.isnan(float(img.mean()))


def test_unknown_mode_is_a_config_error(tmp_path):
    from marl.errors import ConfigError

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match="wandb.mode"):
            RunLogger(tmp_path, CONFIG, 1, wandb={**OFFLINE, "mode": "cloud"})
