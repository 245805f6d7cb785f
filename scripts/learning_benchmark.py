"""Learning-quality benchmark on ``mpe/simple_spread`` (3 agents, 25-step episodes).

Trains each configuration for ``--timesteps`` environment steps over ``--seeds`` vmapped seeds
through the ``marl train`` CLI, then prints, per configuration, the final training
``episode_return`` (mean over agents of each agent's undiscounted return; averaged over the
last 2% of updates), the final and absolute evaluation returns, the first step and wall time at
which the smoothed training return reached ``--target``, all with 95% stratified-bootstrap
confidence intervals across seeds. It also evaluates each trained MAPPO/IPPO policy on mpe2's
``simple_spread_v3`` through the PettingZoo bridge and reports the ratio to its JAX score.

    python scripts/learning_benchmark.py                      # both configs, 10M steps, 3 seeds
    python scripts/learning_benchmark.py --configs mappo --seeds 5 --timesteps 3e6

Results go to ``--out`` (JSON) and the run directories to ``runs/bench``.
Reference: JaxMARL's IPPO with its published MPE configuration ends 10M steps at -19.8
(per-agent training return; a uniformly random policy scores -26.2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = {
    # our default experiment (configs/config.yaml + configs/algo/mappo.yaml)
    "mappo": ["algo=mappo"],
    "ippo": ["algo=ippo"],
    # JaxMARL's published IPPO MPE configuration, reproduced in our trainer
    "jaxmarl_ippo": ["preset=jaxmarl_ippo_mpe"],
}


def run_config(name: str, overrides: list[str], args) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "marl.cli",
        "train",
        "env=mpe/simple_spread",
        *overrides,
        f"num_seeds={args.seeds}",
        f"total_timesteps={int(args.timesteps)}",
        f"experiment=bench-{name}",
        f"logger.root={args.root}",
        "logger.wandb.mode=disabled",
        "logger.progress=false",
        f"eval.num_evals={args.evals}",
        *args.extra,
    ]
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    print(f"  {name}: {time.perf_counter() - t0:.0f} s wall", flush=True)
    return Path(out.strip().splitlines()[-1])


def summarise(run: Path, target: float, smooth: int) -> dict:
    from marl.runlog import read_jsonl

    rows = read_jsonl(run / "metrics.jsonl")
    seeds = sorted({r["seed"] for r in rows})
    final = json.loads((run / "final.json").read_text())
    per_seed = []
    for s in seeds:
        rs = [r for r in rows if r["seed"] == s]
        ret = np.array(
            [np.nan if r["train/episode_return"] is None else r["train/episode_return"] for r in rs]
        )
        steps = np.array([r["env_steps"] for r in rs])
        elapsed = np.array([r["perf/elapsed_s"] for r in rs])
        tail = max(1, len(ret) // 50)
        sm = np.convolve(np.nan_to_num(ret, nan=-1e9), np.ones(smooth) / smooth, mode="valid")
        hit = np.nonzero(sm >= target)[0]
        per_seed.append(
            {
                "seed": s,
                "final_train_return": float(np.nanmean(ret[-tail:])),
                "final_eval_return": final["final"][s]["eval/episode_return"],
                "absolute_eval_return": final["absolute"][s]["eval/episode_return"],
                "steps_to_target": int(steps[hit[0] + smooth - 1]) if len(hit) else None,
                "seconds_to_target": float(elapsed[hit[0] + smooth - 1]) if len(hit) else None,
                "train_seconds": float(elapsed[-1]),
            }
        )
    return {"run_dir": str(run), "seeds": per_seed}


def ci(values) -> dict:
    from marl.stats import stratified_bootstrap_ci

    x = np.array([v for v in values if v is not None], dtype=float)
    if len(x) == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    iv = stratified_bootstrap_ci(x[:, None], "mean", reps=2000, rng=0)
    return {"mean": float(iv.point), "low": float(iv.low), "high": float(iv.high), "n": len(x)}


def cross_eval(run: Path, episodes: int) -> dict:
    from marl.evaluate import evaluate_run

    jax_res = evaluate_run(run, episodes=episodes)
    pz_res = evaluate_run(
        run, episodes=episodes, env_overrides=["env=pz/mpe2_simple_spread", "env.workers=sync"]
    )
    j, p = jax_res["eval/episode_return"], pz_res["eval/episode_return"]
    return {"jax": j, "mpe2": p, "relative_gap": abs(p - j) / abs(j)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--configs", nargs="+", default=["mappo", "jaxmarl_ippo"], choices=sorted(CONFIGS)
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--timesteps", type=float, default=1e7)
    ap.add_argument("--evals", type=int, default=20)
    ap.add_argument("--target", type=float, default=-19.8)
    ap.add_argument("--smooth", type=int, default=10, help="updates in the moving average")
    ap.add_argument("--cross-eval-episodes", type=int, default=320)
    ap.add_argument("--root", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "learning.json"))
    ap.add_argument("extra", nargs="*", help="more overrides for every config")
    args = ap.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")

    results = {
        "machine": _machine(),
        "target": args.target,
        "timesteps": int(args.timesteps),
        "configs": {},
    }
    for name in args.configs:
        run = run_config(name, CONFIGS[name], args)
        summary = summarise(run, args.target, args.smooth)
        seeds = summary["seeds"]
        summary["aggregate"] = {
            k: ci(s[k] for s in seeds)
            for k in (
                "final_train_return",
                "final_eval_return",
                "absolute_eval_return",
                "steps_to_target",
                "seconds_to_target",
                "train_seconds",
            )
        }
        summary["reached_target"] = sum(s["steps_to_target"] is not None for s in seeds)
        if args.cross_eval_episodes:
            summary["cross_eval"] = cross_eval(run, args.cross_eval_episodes)
        results["configs"][name] = summary
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))

    print(
        f"\nmpe/simple_spread, {int(args.timesteps):,} steps, {args.seeds} seeds, "
        f"target {args.target} (mean [95% CI])"
    )
    for name, s in results["configs"].items():
        a = s["aggregate"]

        def f(k, fmt="{:.2f}", a=a):
            v = a[k]
            if v["mean"] is None:
                return "never"
            return f"{fmt.format(v['mean'])} [{fmt.format(v['low'])}, {fmt.format(v['high'])}]"

        print(
            f"{name:14s} train {f('final_train_return')}  eval {f('final_eval_return')}  "
            f"absolute {f('absolute_eval_return')}"
        )
        print(
            f"{'':14s} reached target {s['reached_target']}/{args.seeds} seeds; steps "
            f"{f('steps_to_target', '{:.3g}')}; seconds {f('seconds_to_target', '{:.0f}')}; "
            f"training {f('train_seconds', '{:.0f}')} s"
        )
        if "cross_eval" in s:
            c = s["cross_eval"]
            print(
                f"{'':14s} JAX eval {c['jax']:.2f} vs mpe2 eval {c['mpe2']:.2f}: "
                f"gap {100 * c['relative_gap']:.1f}%"
            )
    print(f"results: {args.out}")


def _machine() -> dict:
    import platform

    import jax

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }


if __name__ == "__main__":
    main()
