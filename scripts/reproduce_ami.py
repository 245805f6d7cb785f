"""Reproduce AMI's claim: a single adversarial agent trained with AMI lowers its cooperative
team's win rate (SMAX) or return (MPE) more than Gleave et al.'s attack, and both more than
a random agent in the same slot.

For each task (4 marines vs 3, 6 vs 5, MPE spread with discrete and with continuous actions)
it trains a MAPPO victim team (presets ``ami_victims_smax`` / ``ami_victims_mpe``; SMAX with
one extra ally, so the adversary takes the extra unit), then
runs every attack on slot 0 through ``marl attack`` with several seeds vmapped in one
program: ``none`` (the clean team), ``random``, ``gleave`` (PPO on the negated team reward),
``ami``, and the ablations ``ami_untargeted`` (no oracle) and ``ami_bilateral`` (the
influence under the realised joint action). Every attack run is evaluated on
``eval.episodes x eval.absolute_factor`` episodes per seed (its best adversary; the victims
sample their actions, as trained; the adversary acts greedily) and the report
(``marl attack-eval``) gives the victims' win rate and team return with 95% stratified
bootstrap intervals over seeds and episodes, and the drop against the clean team. The
attackers' training curves are compared with ``marl compare``.

    python scripts/reproduce_ami.py --budget small     # ~1 h on a 2-core CPU
    python scripts/reproduce_ami.py --budget paper     # the paper's scale, for a GPU

Everything lands in ``runs/reproduce_ami/<budget>/``: victims' and attack run directories,
``report/`` (attack_report.{json,md,png}), ``compare/<task>/`` and ``results.{json,md}``.
Finished runs are reused, so an interrupted reproduction continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_SILENT", "true")
from marl.cli import single_thread_eigen  # noqa: E402  (before JAX starts its backend)

single_thread_eigen()

TASKS = {
    "4m_vs_3m": ["preset=ami_victims_smax", "env.kwargs.N=4", "env.kwargs.M=3"],
    "6m_vs_5m": ["preset=ami_victims_smax", "env.kwargs.N=6", "env.kwargs.M=5"],
    "spread": ["preset=ami_victims_mpe"],
    # the continuous form of AMI (Gaussian victim model and oracle, density influence)
    "spread_continuous": ["preset=ami_victims_mpe", "env.kwargs.continuous=true"],
}
ATTACKS = ["none", "random", "gleave", "ami", "ami_untargeted", "ami_bilateral"]
BUDGETS = {
    "small": {
        "tasks": list(TASKS),
        "victim_steps": {
            "4m_vs_3m": 300_000,
            "6m_vs_5m": 1_000_000,
            "spread": 2_000_000,
            "spread_continuous": 2_000_000,
        },
        "attack_steps": 1_000_000,
        "seeds": 3,
        "num_envs": 64,
        "episodes": 32,  # x absolute_factor 10 = 320 report episodes per seed
    },
    "paper": {
        "tasks": list(TASKS),
        "victim_steps": {
            "4m_vs_3m": 2_000_000,
            "6m_vs_5m": 5_000_000,
            "spread": 5_000_000,
            "spread_continuous": 10_000_000,
        },
        "attack_steps": 5_000_000,
        "seeds": 5,
        "num_envs": 128,
        "episodes": 64,
    },
}


def _once(root: Path, exp: str, marker: str, run) -> Path:
    """``run()`` unless ``root/exp`` already holds a run with ``marker`` (then reused)."""
    done = sorted((root / exp).glob(f"*/{marker}"))
    if done:
        print(f"[reuse] {exp}: {done[-1].parent}", flush=True)
        return done[-1].parent
    t0 = time.time()
    out = run()
    print(f"[done] {exp} in {time.time() - t0:.0f} s: {out}", flush=True)
    return out


def common(exp: str, root: Path, wandb: str) -> list[str]:
    return [
        f"experiment={exp}",
        f"logger.root={root}",
        f"logger.wandb.mode={wandb}",
        "logger.progress=false",
    ]


def victims(root: Path, task: str, budget: dict, wandb: str) -> Path:
    from marl.config import compose
    from marl.trainer import train

    exp = f"victims-{task}"
    steps = budget["victim_steps"][task]
    over = [*TASKS[task], f"total_timesteps={steps}", "eval.video=false", *common(exp, root, wandb)]
    return _once(root, exp, "final.json", lambda: train(compose(over)))


def attack(root: Path, task: str, name: str, victims_dir: Path, budget: dict, wandb: str):
    from marl.attack import run_attack

    exp = f"attack-{task}-{name}"
    over = [
        f"victims={victims_dir}",
        f"attack={name}",
        f"total_timesteps={budget['attack_steps']}",
        f"num_seeds={budget['seeds']}",
        f"num_envs={budget['num_envs']}",
        "algo.rollout_len=64",
        f"eval.episodes={budget['episodes']}",
        "eval.num_evals=10",
        *common(exp, root, wandb),
    ]
    return _once(root, exp, "attack_eval.json", lambda: run_attack(over))


def speed(run: Path) -> float | None:
    """Median training steps/s of a run (all seeds together)."""
    import numpy as np

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    sps = [r["perf/sps"] for r in rows if r.get("perf/sps")]
    return float(np.median(sps)) if sps else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=list(BUDGETS), default="small")
    p.add_argument("--tasks", nargs="*", default=None, help="a subset of " + ", ".join(TASKS))
    p.add_argument("--attacks", nargs="*", default=ATTACKS)
    p.add_argument("--root", default="runs/reproduce_ami")
    p.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"])
    args = p.parse_args()
    from marl.attack import attack_eval, report_markdown
    from marl.cli import enable_compile_cache
    from marl.compare import compare, render_markdown

    enable_compile_cache()
    budget = BUDGETS[args.budget]
    root = Path(args.root) / args.budget
    t_start = time.time()
    attack_runs, speeds, curves = [], {}, {}
    for task in args.tasks or budget["tasks"]:
        v = victims(root, task, budget, args.wandb)
        speeds[f"{task}/victims (mappo)"] = speed(v)
        runs = {}
        for name in args.attacks:
            runs[name] = attack(root, task, name, v, budget, args.wandb)
            if (runs[name] / "metrics.jsonl").is_file():
                speeds[f"{task}/{name}"] = speed(runs[name])
        attack_runs += list(runs.values())
        trained = [r for n, r in runs.items() if (r / "metrics.jsonl").is_file()]
        if len(trained) > 1:
            res = compare(trained, root / "compare" / task, group_by="experiment")
            curves[task] = render_markdown(res)
    report = attack_eval(attack_runs, root / "report", wandb_mode=args.wandb)
    out = {
        "budget": args.budget,
        "settings": budget,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.time() - t_start),
        "report": report["rows"],
        "sps": speeds,
    }
    (root / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        f"# AMI reproduction, budget {args.budget} ({out['date']}, {out['machine']}, "
        f"{out['seconds']} s)",
        "",
        report_markdown(report),
        "Training speed (median steps/s, seeds together):",
        "",
        *(f"- {k}: {v:,.0f}" for k, v in speeds.items() if v),
        "",
        *(f"## attackers' training, {t} (marl compare)\n\n{c}" for t, c in curves.items()),
    ]
    (root / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:4]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
