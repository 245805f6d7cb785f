"""`marl train` end to end on tiny configs: the run directory, determinism, resume,
corrupt checkpoints, non-finite losses, several seeds, the PettingZoo path, evaluation and
comparison."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny import QUIET, TINY

from marl.cli import main
from marl.config import compose
from marl.trainer import train


def tiny(root: Path, *extra: str):
    return compose([*TINY, f"logger.root={root}", *QUIET, *extra])


def rows(run: Path, name: str) -> list[dict]:
    out = [json.loads(line) for line in (run / name).read_text().splitlines()]
    for r in out:  # wall-clock figures differ from run to run
        for k in [k for k in r if k.startswith("perf/")]:
            r.pop(k)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny MAPPO run through the CLI, W&B offline."""
    root = tmp_path_factory.mktemp("runs")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["train", *TINY, f"logger.root={root}", "logger.wandb.mode=offline"]) == 0
    out = buf.getvalue().strip().splitlines()
    run_dir = Path(out[-1])
    assert run_dir.parent == root / "mappo-mpe-simple_spread"
    return run_dir


def test_run_directory(run):
    for f in (
        "config.yaml",
        "metrics.jsonl",
        "eval.jsonl",
        "final.json",
        "learning_curve.png",
        "marl_eval.json",
    ):
        assert (run / f).is_file(), f
    m = rows(run, "metrics.jsonl")
    assert [r["update"] for r in m] == list(range(1, 17))
    assert [r["env_steps"] for r in m] == [128 * u for u in range(1, 17)]
    assert all(np.isfinite(r["loss/total"]) for r in m)
    assert all(r["train/episode_return"] < 0 for r in m)  # simple_spread rewards are negative
    e = rows(run, "eval.jsonl")
    assert [r["update"] for r in e] == [4, 8, 12, 16] and all(r["episodes"] == 4 for r in e)
    final = json.loads((run / "final.json").read_text())
    assert final["absolute"][0]["episodes"] == 8 and final["updates"] == 16
    assert final["final"][0]["eval/episode_return"] == e[-1]["eval/episode_return"]
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [8, 12, 16]
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    (offline,) = list((run / "wandb").glob("offline-run-*"))  # syncable with `wandb sync`
    data = next(offline.glob("run-*.wandb")).read_bytes()
    assert b"algo=mappo" in data and b"env=mpe/simple_spread" in data  # W&B tags


def test_same_seed_same_metrics(run, tmp_path):
    again = train(tiny(tmp_path))
    assert rows(again, "metrics.jsonl") == rows(run, "metrics.jsonl")
    assert rows(again, "eval.jsonl") == rows(run, "eval.jsonl")


def test_resume_ends_like_an_uninterrupted_run(run, tmp_path):
    part = train(tiny(tmp_path), stop_after_chunks=2)  # "killed" after update 8
    assert len(rows(part, "metrics.jsonl")) == 8
    resumed = train(compose([f"resume={part}"]))
    assert resumed == part
    assert rows(resumed, "metrics.jsonl") == rows(run, "metrics.jsonl")
    assert rows(resumed, "eval.jsonl") == rows(run, "eval.jsonl")
    f1, f2 = (json.loads((r / "final.json").read_text()) for r in (run, resumed))
    assert f1["absolute"] == f2["absolute"]


def test_corrupt_latest_checkpoint_falls_back(run, tmp_path):
    part = train(tiny(tmp_path), stop_after_chunks=3)  # checkpoints at 4, 8, 12
    newest = part / "checkpoints" / "12"
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "manifest" not in str(f):
            f.write_bytes(b"\x00garbage" * 8)
    with pytest.warns(RuntimeWarning):
        resumed = train(compose([f"resume={part}"]))
    # it went back to update 8 and, being deterministic, still ends like the clean run
    assert rows(resumed, "metrics.jsonl") == rows(run, "metrics.jsonl")


def test_resume_before_the_first_checkpoint_starts_again(run, tmp_path, capsys):
    """A run killed before its first checkpoint (a pre-empted job) restarts from its saved
    config in the same directory and, being deterministic, ends like the uninterrupted run."""
    part = train(tiny(tmp_path), stop_after_chunks=1)
    shutil.rmtree(part / "checkpoints")
    resumed = train(compose([f"resume={part}"]))
    assert resumed == part and "starting the run again" in capsys.readouterr().err
    assert rows(resumed, "metrics.jsonl") == rows(run, "metrics.jsonl")
    assert rows(resumed, "eval.jsonl") == rows(run, "eval.jsonl")


def test_resume_without_a_config_fails_clearly(tmp_path, capsys):
    (tmp_path / "not_a_run").mkdir()
    assert main(["train", f"resume={tmp_path / 'not_a_run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run directory (no config.yaml)" in err[0]


def test_non_finite_loss_stops_the_run(tmp_path, capsys):
    code = main(
        [
            "train",
            *TINY,
            f"logger.root={tmp_path}",
            "logger.wandb.mode=disabled",
            "algo.lr=1e30",
            "algo.max_grad_norm=1e30",
        ]
    )
    err = capsys.readouterr().err
    assert code == 3 and "non-finite loss at update" in err


def test_several_seeds_recurrent_ippo(tmp_path):
    run = train(tiny(tmp_path, "algo=ippo_rnn", "num_seeds=2"))
    m = rows(run, "metrics.jsonl")
    assert sorted({r["seed"] for r in m}) == [0, 1] and len(m) == 32
    a = [r["loss/total"] for r in m if r["seed"] == 0]
    b = [r["loss/total"] for r in m if r["seed"] == 1]
    assert a != b  # the seeds really differ
    assert len(json.loads((run / "final.json").read_text())["absolute"]) == 2


def test_pettingzoo_training_and_evaluation(run, tmp_path):
    pz_cfg = ("env=pz/mpe2_simple_spread", "env.workers=sync")
    pz = train(tiny(tmp_path / "a", *pz_cfg))
    m = rows(pz, "metrics.jsonl")
    assert len(m) == 16 and all(np.isfinite(r["loss/total"]) for r in m)
    # resuming works here too: the worker copies restart, seeded by the update, after every
    # evaluation and on resume, so the resumed run sees the same episodes
    part = train(tiny(tmp_path / "b", *pz_cfg), stop_after_chunks=2)
    resumed = train(compose([f"resume={part}"]))
    assert rows(resumed, "metrics.jsonl") == m
    # the policy trained on JAX simple_spread, evaluated on mpe2 through the bridge
    from marl.evaluate import evaluate_run

    res = evaluate_run(
        run, episodes=8, env_overrides=["env=pz/mpe2_simple_spread", "env.workers=sync"]
    )
    assert res["env"] == "pz/mpe2_simple_spread" and res["episodes"] == 8
    assert -60 < res["eval/episode_return"] < 0
    assert list((run / "evaluations").glob("*.json"))


def test_evaluate_and_compare_cli(run, tmp_path, capsys):
    assert main(["evaluate", str(run), "--episodes", "8"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["env"] == "mpe/simple_spread" and res["checkpoint_update"] == 16
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.png").is_file()
    assert (tmp_path / "cmp" / "compare.json").is_file()


def gif_ms(im) -> int:
    """A GIF's length in milliseconds (Pillow merges identical frames, adding their times)."""
    total = 0
    for i in range(im.n_frames):
        im.seek(i)
        total += im.info["duration"]
    return total


def test_render_writes_a_gif_of_greedy_episodes(run, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "episode.gif"
    assert main(["render", str(run), "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["video"] == str(out) and result["episodes"] == 1
    assert result["frames"] == 25 and len(result["returns"]) == 1  # an episode of 25 steps
    with Image.open(out) as im:  # identical frames are merged: count the time they span
        assert im.format == "GIF" and gif_ms(im) == 25 * 100


def test_final_evaluation_video_in_the_run_and_in_wandb(run):
    from PIL import Image

    video = run / "videos" / "final.gif"
    with Image.open(video) as im:  # one greedy episode of simple_spread: 25 frames
        assert im.format == "GIF" and gif_ms(im) == 25 * 100 and im.size == (320, 320)
    media = list((run / "wandb").glob("offline-run-*/files/media/videos/eval/video_*.gif"))
    assert len(media) == 1 and media[0].read_bytes() == video.read_bytes()


def test_drawing_mpe_and_smax_states():
    import jax

    from marl import envs
    from marl.render import draw_mpe, draw_smax

    for name, draw in (("mpe/simple_push", draw_mpe), ("smax/3m", draw_smax)):
        env = envs.make_array_env(name)  # simple_push has grey-level colours
        state, _ = env.reset(jax.random.PRNGKey(0))
        frame = draw(env.env, state.env_state)
        assert frame.shape == (320, 320, 3) and frame.dtype == np.uint8
        assert (frame != 255).any(axis=-1).sum() > 50  # the entities are drawn


def test_render_refuses_what_it_cannot_draw(run, tmp_path, capsys):
    assert main(["render", str(run), "--out", str(tmp_path / "x.avi")]) == 2
    assert "must end in .gif or .mp4" in capsys.readouterr().err
    assert main(["render", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
