"""The `marl` command line: listings, resolved configs and one-line errors."""

import json
import subprocess
import sys

import pytest

from marl.cli import main


def test_envs_lists_every_environment_with_shapes(capsys):
    assert main(["envs", "--json", "mpe/simple_spread", "smax/3m"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in out] == ["mpe/simple_spread", "smax/3m"]
    assert out[0]["obs"] == [3, 21] and out[0]["actions"] == [3, 5]
    assert out[1]["state_source"] == "env" and out[1]["has_win"] is True
    assert {"N": 5} in out[0]["variants"]


def test_envs_table(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    for name in ("mpe/simple_spread", "mpe/simple_tag", "smax/5m_vs_6m", "hanabi"):
        assert name in out
    assert "heterogeneous (padded)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["envs", "mpe/simple_sprad"],
            "unknown environment 'mpe/simple_sprad'. Did you mean 'mpe/simple_spread'",
        ),
        (["train", "algo.lrr=1"], "unknown config key 'algo.lrr'. Did you mean 'algo.lr'"),
        (["train", "env=smax/3mm"], "unknown env 'smax/3mm'. Did you mean 'smax/3m'"),
        (["train", "algo=mapo"], "unknown algo 'mapo'. Did you mean 'mappo'"),
        (["train", "seed=abc"], "invalid config value for seed"),
        (["train", "num_envs=0"], "num_envs must be >= 1"),
        (["train", "logger.wandb.mode=on"], "logger.wandb.mode='on' is not one of"),
        (["train", "total_timesteps=10"], "less than one update"),
        (["evaluate", "/nonexistent/run"], "is not a run directory"),
        (["train", "env.kwargs.N=99"], "N=99 is not one of its variants (N = 2, 3, 4"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert not (tmp_path / "runs").exists()  # no empty run directory left behind
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cfg_job_prints_the_resolved_config(capsys):
    assert (
        main(
            [
                "train",
                "--cfg",
                "job",
                "env=smax/3m",
                "algo=ippo",
                "seed=3",
                "algo.lr=3e-4",
                "num_seeds=4",
                "env.kwargs.max_steps=50",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "name: smax/3m" in out and "name: ippo" in out and "lr: 0.0003" in out
    assert "seed: 3" in out and "num_seeds: 4" in out and "max_steps: 50" in out
    assert main(["train", "--cfg", "job", "total_timesteps=1e7"]) == 0  # as researchers write it
    assert "total_timesteps: 10000000" in capsys.readouterr().out


def test_console_script_exit_code():
    """The installed entry point, as a user runs it: non-zero exit, no traceback."""
    r = subprocess.run(
        [sys.executable, "-m", "marl.cli", "train", "foo=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "unknown config key 'foo'" in r.stderr and "Traceback" not in r.stderr


def test_config_does_not_start_jax_backend():
    """`marl train` joins a multi-process run before JAX's backend starts: composing the
    config must not import jaxmarl (whose import creates arrays)."""
    code = "import sys, marl.config; print('jaxmarl' in sys.modules, 'marl.envs' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "False"], r.stderr


def test_out_of_memory_names_the_settings_to_lower(capsys, tmp_path, monkeypatch):
    import marl.trainer

    def oom(cfg):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 107374182400 bytes.")

    monkeypatch.setattr(marl.trainer, "train", oom)
    assert main(["train", "num_envs=4096", f"logger.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory for the training batch" in err
    assert "lower num_envs (now 4096), num_seeds (1) or algo.rollout_len (128)" in err
