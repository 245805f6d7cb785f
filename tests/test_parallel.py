"""Data-parallel training over several devices (forced CPU host devices) and over two
processes joined with jax.distributed: the same total batch learns the same as one device."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TINY = [
    "total_timesteps=4096",
    "num_envs=8",
    "algo.rollout_len=32",
    "algo.num_minibatches=2",
    "algo.update_epochs=2",
    "eval.num_evals=2",
    "eval.episodes=4",
    "eval.absolute_factor=2",
    "logger.progress=false",
    "logger.wandb.mode=disabled",
    "eval.video=false",
]

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from marl.config import compose
    from marl.trainer import Trainer, train
    root, tiny = sys.argv[1], sys.argv[2:]
    out = {"devices": len(jax.devices())}
    for devices in ("1", "all"):
        cfg = compose(tiny + [f"devices={devices}", f"experiment=d{devices}",
                              f"logger.root={root}"])
        if devices == "all":
            t = Trainer(cfg, None)
            r = t.init_runner()
            out["mesh"] = len(t.mesh.devices.flat)
            out["first_shards"] = len(r.first.sharding.device_set)
            out["params_replicated"] = r.train.params["actor"]["params"]["torso"]["Dense_0"][
                "kernel"].sharding.is_fully_replicated
        run = train(cfg)
        out[devices] = [json.loads(l)["loss/total"] for l in open(run / "metrics.jsonl")]
    print(json.dumps(out))
""")


CACHE = str(Path(__file__).resolve().parent.parent / ".jax_cache")


def _env(**extra):
    env = dict(
        os.environ,
        WANDB_SILENT="true",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=CACHE,
        MARL_COMPILE_CACHE=CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
        **extra,
    )
    env.pop("XLA_FLAGS", None) if "XLA_FLAGS" not in extra else None
    return env


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    root = tmp_path_factory.mktemp("md")
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root), *TINY],
        capture_output=True,
        text=True,
        timeout=400,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_sharded_over_two_devices_learns_like_one(two_devices):
    out = two_devices
    assert out["devices"] == 2 and out["mesh"] == 2
    assert out["first_shards"] == 2 and out["params_replicated"]  # env copies split
    assert len(out["1"]) == 16
    np.testing.assert_allclose(out["all"], out["1"], rtol=1e-4, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_together(two_devices, tmp_path):
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "marl.cli",
        "train",
        *TINY,
        "devices=all",
        "experiment=mh",
        f"logger.root={tmp_path}",
        f"distributed.coordinator=127.0.0.1:{port}",
        "distributed.num_processes=2",
    ]
    procs = [
        subprocess.Popen(
            [*cmd, f"distributed.process_id={i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    run = Path(outs[0][0].strip().splitlines()[-1])
    losses = [json.loads(line)["loss/total"] for line in (run / "metrics.jsonl").open()]
    # 2 processes x 4 copies learn what one process with 8 copies learns
    np.testing.assert_allclose(losses, two_devices["1"], rtol=1e-4, atol=1e-6)
    assert not (tmp_path / "mh" / "process-1").exists()  # only process 0 writes


INTERRUPTED = textwrap.dedent("""
    import sys
    from marl.config import compose
    from marl.parallel import init_distributed
    port, pid, root, tiny = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    init_distributed(f"127.0.0.1:{port}", 2, pid)
    from marl.trainer import train
    cfg = compose(tiny + ["devices=all", "experiment=mhr", f"logger.root={root}"])
    print(train(cfg, stop_after_chunks=1))
""")


def _two_processes(argv_of, timeout=400):
    procs = [
        subprocess.Popen(
            argv_of(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [o.strip().splitlines()[-1] for o, _ in outs]


def test_two_processes_checkpoint_and_resume(two_devices, tmp_path):
    """A checkpoint holds the environment copies of both processes; a run stopped after its
    first chunk and resumed (``marl train resume=...`` on both processes) ends as an
    uninterrupted single-process run does."""
    port = _free_port()
    runs = _two_processes(
        lambda i: [sys.executable, "-c", INTERRUPTED, str(port), str(i), str(tmp_path), *TINY]
    )
    run = Path(runs[0])
    assert runs[1] == runs[0]  # every process knows process 0's run directory
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8]  # the first chunk's checkpoint, nothing later
    port = _free_port()
    _two_processes(
        lambda i: [
            sys.executable,
            "-m",
            "marl.cli",
            "train",
            f"resume={run}",
            f"distributed.coordinator=127.0.0.1:{port}",
            "distributed.num_processes=2",
            f"distributed.process_id={i}",
        ]
    )
    losses = [json.loads(line)["loss/total"] for line in (run / "metrics.jsonl").open()]
    np.testing.assert_allclose(losses, two_devices["1"], rtol=1e-4, atol=1e-6)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8, 16]
    # the checkpoint holds every copy: 4 per process, 8 in all
    manifest = json.loads((run / "checkpoints" / "16" / "manifest" / "metadata").read_text())
    shapes = dict(zip(manifest["paths"], manifest["shapes"], strict=True))
    assert shapes["['runner'].first"] == [1, 8]
