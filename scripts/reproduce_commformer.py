"""Reproduce CommFormer's claim: a sparse learned communication graph (S = 0.4) performs close
to full communication (MAT, S = 1) and clearly above no communication.

Trains, with the same code, network and budget per task:

- ``commformer``: MAT with a learned graph, S = 0.4 (``algo=commformer``);
- ``mat``: full communication (``algo=mat``, S = 1);
- ``no_comm``: self loops only (``algo=mat algo.graph.mode=none``);
- ``mappo``: the MAPPO baseline (MAPPO-RNN with JaxMARL's SMAX settings on SMAX, MAPPO on MPE);

several seeds each (vmapped in one program per method and task), then compares them per task
through :func:`marl.compare.compare` (IQM and mean with 95% stratified bootstrap CIs) and
prints one table. ``--gating`` adds CommFormer with the temporal gate for a few penalties on
one task and plots the final return against the communication rate.

    python scripts/reproduce_commformer.py --budget small            # ~1 h on a 2-core CPU
    python scripts/reproduce_commformer.py --budget small --gating   # + the gating curve
    python scripts/reproduce_commformer.py --budget paper            # the paper's scale (GPU)

Everything lands in ``runs/reproduce_commformer/<budget>/``: one run directory per method and
task (``<method>/<run-id>/``), the comparison of each task (``compare/<task>/``), the table
(``results.md``), the numbers (``results.json``) and ``gating.png``. Finished runs (with a
``final.json``) are reused, so an interrupted reproduction continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_SILENT", "true")
from marl.cli import single_thread_eigen  # noqa: E402  (before JAX starts its backend)

single_thread_eigen()

# The budgets: tasks with their env steps per seed, seeds, and the gating study.
BUDGETS = {
    "small": {
        "tasks": {"mpe/simple_reference": 300_000, "smax/3m": 300_000},
        "seeds": 3,
        "num_envs": 32,
        # rollout length of the MAT-style methods: one MPE episode, half the SMAX limit (the
        # reference's 100 x 32 envs gives ~100 updates at this budget, too few to learn)
        "mat_rollout": {"mpe": 25, "smax": 50},
        "gating_task": "mpe/simple_reference",
        "gating_steps": 200_000,
        "gating_penalties": [0.0, 0.5],
        "gating_seeds": 2,
    },
    "paper": {
        "tasks": {
            "smax/3m": 5_000_000,
            "smax/8m": 10_000_000,
            "smax/2s3z": 10_000_000,
            "smax/5m_vs_6m": 10_000_000,
            "mpe/simple_reference": 5_000_000,
            "mpe/simple_speaker_listener": 5_000_000,
            "mpe/simple_spread": 5_000_000,
        },
        "seeds": 5,
        "num_envs": 32,
        "mat_rollout": {"mpe": 25, "smax": 100},  # the reference's 100 steps on SMAC
        "gating_task": "smax/3m",
        "gating_steps": 5_000_000,
        "gating_penalties": [0.0, 0.01, 0.05, 0.1, 0.5],
        "gating_seeds": 3,
    },
}

# Method -> overrides. MAT-style methods share CommFormer's reference settings
# (configs/algo/mat.yaml); MAPPO on SMAX is JaxMARL's MAPPO-RNN configuration.
METHODS = {
    "commformer": ["algo=commformer", "algo.graph.sparsity=0.4"],
    "mat": ["algo=mat"],
    "no_comm": ["algo=mat", "algo.graph.mode=none"],
    "mappo": ["algo=mappo"],
}
MAPPO_SMAX = [
    "algo=mappo_rnn",
    "algo.lr=0.002",
    "algo.ent_coef=0.0",
    "algo.max_grad_norm=0.25",
    "algo.network.activation=relu",
    "algo.network.hidden=[128,128]",
    "algo.network.gru_features=128",
]


def metric_of(task: str) -> str:
    return "eval/win_rate" if task.startswith("smax/") else "eval/episode_return"


def overrides(method: str, task: str, budget: dict, seeds: int | None = None) -> list[str]:
    """The ``marl train`` overrides of ``method`` on ``task`` at ``budget``."""
    ov = list(MAPPO_SMAX if method == "mappo" and task.startswith("smax/") else METHODS[method])
    if method != "mappo":
        ov.append(f"algo.rollout_len={budget['mat_rollout'][task.split('/')[0]]}")
    steps, seeds, num_envs = budget["tasks"][task], seeds or budget["seeds"], budget["num_envs"]
    return [
        *ov,
        f"env={task}",
        f"total_timesteps={steps}",
        f"num_seeds={seeds}",
        f"num_envs={num_envs}",
        "eval.num_evals=10",
        "logger.progress=false",
    ]


def finished_run(root: Path, experiment: str, task: str) -> Path | None:
    """A finished run of ``experiment`` on ``task`` under ``root``, if one exists."""
    import yaml

    for final in sorted((root / experiment).glob("*/final.json")):
        cfg = yaml.safe_load((final.parent / "config.yaml").read_text())
        if cfg["env"]["name"] == task:
            return final.parent
    return None


def run(root: Path, experiment: str, task: str, ov: list[str], wandb: str) -> Path:
    from marl.config import compose
    from marl.trainer import train

    done = finished_run(root, experiment, task)
    if done is not None:
        print(f"[reuse] {experiment} on {task}: {done}", flush=True)
        return done
    t0 = time.time()
    cfg = compose(
        [*ov, f"experiment={experiment}", f"logger.root={root}", f"logger.wandb.mode={wandb}"]
    )
    cfg.logger.wandb.group = f"reproduce_commformer-{task.replace('/', '-')}"
    run_dir = train(cfg)
    print(f"[done] {experiment} on {task} in {time.time() - t0:.0f} s: {run_dir}", flush=True)
    return run_dir


def compare_task(root: Path, task: str, runs: dict[str, Path]) -> dict:
    from marl.compare import compare, render_markdown

    res = compare(
        list(runs.values()),
        root / "compare" / task.replace("/", "-"),
        metric=metric_of(task),
        group_by="experiment",
    )
    print(render_markdown(res), flush=True)
    out = {}
    for row in res.rows:
        out[row.algorithm] = {
            "iqm": row.iqm.point,
            "iqm_ci": [row.iqm.low, row.iqm.high],
            "mean": row.mean.point,
            "mean_ci": [row.mean.low, row.mean.high],
            "runs": row.num_runs,
        }
    return out


def gating_study(root: Path, budget: dict, wandb: str) -> list[dict]:
    """CommFormer with the temporal gate for each penalty: final return and the
    communication rate (mean gate over the last tenth of training)."""
    from marl.runlog import read_jsonl

    task = budget["gating_task"]
    points = []
    for lam in budget["gating_penalties"]:
        name = f"gating-{lam:g}"
        steps = {"tasks": {task: budget["gating_steps"]}}
        ov = overrides("commformer", task, {**budget, **steps}, budget["gating_seeds"])
        ov += ["algo.gating=true", f"algo.gate_penalty={lam}"]
        run_dir = run(root, name, task, ov, wandb)
        rows = read_jsonl(run_dir / "metrics.jsonl")
        last_update = max(r["update"] for r in rows)
        tail = [r["comm/rate"] for r in rows if r["update"] > 0.9 * last_update]
        final = json.loads((run_dir / "final.json").read_text())
        rets = [r[metric_of(task)] for r in final["final"]]
        points.append(
            {
                "penalty": lam,
                "comm_rate": sum(tail) / len(tail),
                "final": sum(rets) / len(rets),
                "per_seed": rets,
                "run_dir": str(run_dir),
            }
        )
    _plot_gating(points, task, root / "gating.png")
    return points


def _plot_gating(points: list[dict], task: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for p in points:
        ax.scatter([p["comm_rate"]] * len(p["per_seed"]), p["per_seed"], alpha=0.3, color="C0")
        ax.scatter([p["comm_rate"]], [p["final"]], color="C0")
        ax.annotate(f"λ={p['penalty']:g}", (p["comm_rate"], p["final"]), fontsize=8)
    ax.set_xlabel("communication rate (mean gate)")
    ax.set_ylabel(metric_of(task))
    ax.set_title(f"CommFormer gating on {task}", fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path))


def table(results: dict, tasks: list[str]) -> str:
    methods = list(METHODS)
    head = "| task (metric) | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 1)]
    for task in tasks:
        cells = []
        for m in methods:
            r = results[task].get(m)
            cells.append(
                "-"
                if r is None
                else f"{r['mean']:.3f} [{r['mean_ci'][0]:.3f}, {r['mean_ci'][1]:.3f}]"
            )
        lines.append(f"| {task} ({metric_of(task).split('/')[1]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    p.add_argument("--gating", action="store_true", help="also run the gating study")
    p.add_argument("--tasks", nargs="*", help="a subset of the budget's tasks")
    p.add_argument("--root", default="runs/reproduce_commformer")
    p.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"])
    p.add_argument("--steps", type=int, help="env steps per seed for every task (smoke tests)")
    args = p.parse_args(argv)
    budget = dict(BUDGETS[args.budget])
    if args.steps:
        budget["tasks"] = {t: args.steps for t in budget["tasks"]}
    root = Path(args.root) / args.budget
    tasks = args.tasks or list(budget["tasks"])
    unknown = [t for t in tasks if t not in budget["tasks"]]
    if unknown:
        print(f"unknown task(s) {unknown}; the budget has {list(budget['tasks'])}", file=sys.stderr)
        return 2
    from marl.cli import enable_compile_cache

    enable_compile_cache()  # a relaunch of the same configs skips their compiles
    t0 = time.time()
    results: dict = {}
    for task in tasks:
        runs = {}
        for method in METHODS:
            ov = overrides(method, task, budget)
            runs[method] = run(root, method, task, ov, args.wandb)
        results[task] = compare_task(root, task, runs)
    out = {
        "budget": args.budget,
        "tasks": {t: budget["tasks"][t] for t in tasks},
        "seeds": budget["seeds"],
        "results": results,
    }
    if args.gating:
        out["gating"] = gating_study(root, budget, args.wandb)
    out["wall_s"] = time.time() - t0
    md = table(results, tasks)
    print("\nmean over seeds of the absolute metric (best parameters, 320 episodes), 95% CI:")
    print(md)
    if args.gating:
        print("\ngating (penalty: communication rate -> final score):")
        for g in out["gating"]:
            print(f"  lambda={g['penalty']:g}: rate {g['comm_rate']:.3f} -> {g['final']:.3f}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    (root / "results.md").write_text(md + "\n")
    print(f"\n{root / 'results.json'}  ({out['wall_s'] / 60:.0f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
