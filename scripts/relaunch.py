"""Start-up cost of a relaunch, inside the process: imports, then ``train()`` of a tiny MPE
config (1 update, one evaluation), in fresh processes on one compilation cache.

    python scripts/relaunch.py --launches 3                     # empty cache, then cached
    python scripts/relaunch.py --min-compile-s 0.5 --no-programs  # the settings before

The first launch fills the cache; the others show what a relaunch costs. Whole-process
figures of the full default run are in ``marl bench --only relaunch``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from marl.cli import enable_compile_cache, single_thread_eigen
single_thread_eigen()
enable_compile_cache()
import jax
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(sys.argv[1]))
from marl.config import compose
from marl.trainer import train
t1 = time.perf_counter()
overrides = ["total_timesteps=32", "num_envs=2", "algo.rollout_len=16", "algo.num_minibatches=1",
             "algo.update_epochs=1", "eval.num_evals=1", "eval.episodes=2",
             "eval.absolute_factor=1", "eval.video=false", "logger.progress=false",
             "logger.wandb.mode=disabled", f"logger.root={sys.argv[2]}"]
train(compose(overrides))
print("RESULT " + json.dumps({"import_s": t1 - t0, "train_s": time.perf_counter() - t1}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--launches", type=int, default=3)
    p.add_argument("--min-compile-s", type=float, default=0.0, help="JAX's cache floor")
    p.add_argument("--no-programs", action="store_true", help="MARL_PROGRAM_CACHE=0")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="marl-relaunch-") as tmp:
        env = dict(os.environ, MARL_COMPILE_CACHE=os.path.join(tmp, "cache"))
        env["JAX_PLATFORMS"] = "cpu"
        if args.no_programs:
            env["MARL_PROGRAM_CACHE"] = "0"
        for i in range(args.launches):
            cmd = [sys.executable, "-c", CHILD, str(args.min_compile_s), os.path.join(tmp, "r")]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            res = json.loads(out.stdout.split("RESULT ", 1)[1])
            kind = "empty cache" if i == 0 else "cached"
            print(
                f"launch {i + 1} ({kind}): import {res['import_s']:.2f} s, "
                f"train {res['train_s']:.2f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
