"""Reproduce MRA's claim: one policy set trained across games with different numbers of
agents generalises to unseen agent counts better than the same architecture trained on a
single game or without its latent (unimodal).

For each population family (``population/spread``: MPE simple_spread; ``population/occupy``:
resource occupation) it trains, at the same budget and with several seeds vmapped in one
program per method:

- ``mra``: ``algo=mra`` on the training games (N = 3, 4, 5);
- ``mra_single``: the same architecture on one game only (N = 4);
- ``unimodal``: the same architecture without the latent (``algo.latent.num=1``) on N = 3, 4, 5;
- ``mappo``: MAPPO with parameter sharing on N = 3, 4, 5, padded to the largest evaluation N.

then evaluates every run on N = 2..7 (the unseen N = 2, 6, 7 and the training N = 3, 4, 5)
zero-shot, and the latent methods also after fast adaptation (``adapt=pg``: first-order
steps on the prior's logits; ``adapt=select``: the best single latent), all through
``marl evaluate``. Scores are the mean episode return of each seed (64 episodes per game);
the tables give the mean over seeds with a 95% stratified bootstrap CI (:mod:`marl.stats`,
as ``marl compare``), per game and aggregated over the unseen and over the training games
after min-max normalising each game over all methods. The training runs themselves are
compared with ``marl compare`` (each on its own training games).

    python scripts/reproduce_mra.py --budget small     # ~1 h on a 2-core CPU
    python scripts/reproduce_mra.py --budget paper     # larger, for a GPU

Everything lands in ``runs/reproduce_mra/<budget>/``: run directories per family and method,
``compare/<family>/`` (training games), ``results.json`` and ``results.md``. Finished runs and
evaluations are reused, so an interrupted reproduction continues where it stopped.
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

BUDGETS = {
    "small": {
        "families": ["population/spread", "population/occupy"],
        "steps": 400_000,
        "seeds": 3,
        "num_envs": 24,
        "episodes": 64,  # evaluation episodes per unseen game
    },
    "paper": {
        "families": ["population/spread", "population/occupy"],
        "steps": 5_000_000,
        "seeds": 5,
        "num_envs": 96,
        "episodes": 200,
    },
}
TRAIN, SINGLE, UNSEEN, PAD = [3, 4, 5], [4], [2, 6, 7], 7
ALL = sorted(TRAIN + UNSEEN)

# method -> (overrides, training agent counts, padding at training)
METHODS = {
    "mra": (["algo=mra"], TRAIN, max(TRAIN)),
    "mra_single": (["algo=mra"], SINGLE, max(SINGLE)),
    "unimodal": (["algo=mra", "algo.latent.num=1"], TRAIN, max(TRAIN)),
    # fixed shapes: padded at training to the largest count it will be evaluated on
    "mappo": (["algo=mappo"], TRAIN, PAD),
}
ADAPT = {"pg": {"adapt": "pg", "adapt_steps": 5}, "select": {"adapt": "select"}}


def _list(xs: list[int]) -> str:
    return "[" + ",".join(map(str, xs)) + "]"


def overrides(method: str, family: str, budget: dict) -> list[str]:
    ov, counts, pad = METHODS[method]
    return [
        *ov,
        f"env={family}",
        f"env.kwargs.agents={_list(counts)}",
        f"env.kwargs.max_agents={pad}",
        f"total_timesteps={budget['steps']}",
        f"num_seeds={budget['seeds']}",
        f"num_envs={budget['num_envs']}",
        "eval.num_evals=8",
        "eval.episodes=48",
        "eval.video=false",
        "logger.progress=false",
    ]


def train_run(root: Path, family: str, method: str, budget: dict, wandb: str) -> Path:
    from marl.config import compose
    from marl.trainer import train

    exp = f"{family.split('/')[1]}-{method}"
    done = sorted((root / exp).glob("*/final.json"))
    if done:
        print(f"[reuse] {exp}: {done[-1].parent}", flush=True)
        return done[-1].parent
    t0 = time.time()
    cfg = compose(
        [
            *overrides(method, family, budget),
            f"experiment={exp}",
            f"logger.root={root}",
            f"logger.wandb.mode={wandb}",
        ]
    )
    cfg.logger.wandb.group = f"reproduce_mra-{family.split('/')[1]}"
    run_dir = train(cfg)
    print(f"[done] {exp} in {time.time() - t0:.0f} s: {run_dir}", flush=True)
    return run_dir


def evaluate(run_dir: Path, budget: dict, adapt: dict | None) -> dict:
    """``marl evaluate`` on every game, seen and unseen (cached in the run directory)."""
    from marl.evaluate import evaluate_run

    tag = "zero_shot" if adapt is None else adapt["adapt"]
    cache = run_dir / f"games-{tag}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    res = evaluate_run(
        run_dir,
        episodes=budget["episodes"] * len(ALL),
        env_overrides=[f"env.kwargs.agents={_list(ALL)}", f"env.kwargs.max_agents={PAD}"],
        adapt=None if adapt is None else {**adapt, "adapt_episodes": 48},
    )
    cache.write_text(json.dumps(res, indent=2))
    return res


def ci(scores, statistic: str = "mean") -> list[float]:
    from marl import stats

    iv = stats.stratified_bootstrap_ci(scores, statistic, reps=2000, rng=0)
    return [iv.point, iv.low, iv.high]


def family_results(root: Path, family: str, budget: dict, wandb: str) -> dict:
    from marl.compare import compare, render_markdown

    runs = {m: train_run(root, family, m, budget, wandb) for m in METHODS}
    res = compare(
        list(runs.values()),
        root / "compare" / family.split("/")[1],
        metric="eval/episode_return",
        group_by="experiment",
    )
    print(render_markdown(res), flush=True)
    out: dict = {"train_runs": {}, "games": {}, "seconds": {}}
    for row in res.rows:
        out["train_runs"][row.algorithm] = [row.mean.point, row.mean.low, row.mean.high]
    for m, d in runs.items():
        variants = {"zero-shot": None}
        if m.startswith("mra"):  # a latent prior to adapt (unimodal has one latent only)
            variants.update(ADAPT)
        for name, adapt in variants.items():
            t0 = time.time()
            r = evaluate(d, budget, adapt)
            games = r["games"] if adapt is None else r["adapted"]["games"]
            out["games"][f"{m} ({name})" if adapt else m] = {g: v for g, v in games.items()}
            out["seconds"][f"{m} {name}"] = round(time.time() - t0, 1)
    return out


def tables(results: dict) -> str:
    from marl.stats import stratified_bootstrap_ci

    lines = []
    for family, res in results.items():
        scores = res["games"]
        games = [f"N={n}" for n in ALL]
        lo = {g: min(min(v[g]) for v in scores.values()) for g in games}
        hi = {g: max(max(v[g]) for v in scores.values()) for g in games}
        lines += [
            f"### {family}: return per agent count (mean over seeds, 95% CI); unseen: "
            f"N={UNSEEN}, training: N={TRAIN} (mra_single: N={SINGLE})",
            "",
            "| method | " + " | ".join(games) + " | unseen, normalised | training, normalised |",
            "|---|" + "---|" * (len(games) + 2),
        ]
        for m, v in scores.items():
            cells = [_fmt(ci(v[g])) for g in games]
            for group in (UNSEEN, TRAIN):
                norm = {
                    g: [(x - lo[g]) / max(hi[g] - lo[g], 1e-9) for x in v[g]]
                    for g in (f"N={n}" for n in group)
                }
                iv = stratified_bootstrap_ci(norm, "mean", reps=2000, rng=0)
                cells.append(_fmt([iv.point, iv.low, iv.high], 3))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", "training runs, each on its own games (marl compare, absolute metric):", ""]
        for m, v in res["train_runs"].items():
            lines.append(f"- {m}: {_fmt(v)}")
        lines.append("")
    return "\n".join(lines)


def _fmt(v: list[float], digits: int = 1) -> str:
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    p.add_argument("--families", nargs="*", help="a subset of the budget's families")
    p.add_argument("--root", default="runs/reproduce_mra")
    p.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"])
    p.add_argument("--steps", type=int, help="env steps per seed (smoke tests)")
    p.add_argument("--seeds", type=int, help="seeds per method (smoke tests)")
    args = p.parse_args(argv)
    budget = dict(BUDGETS[args.budget])
    if args.steps:
        budget["steps"] = args.steps
    if args.seeds:
        budget["seeds"] = args.seeds
    families = args.families or budget["families"]
    bad = [f for f in families if f not in BUDGETS["paper"]["families"]]
    if bad:
        print(f"unknown family {bad[0]!r}; choose from {budget['families']}", file=sys.stderr)
        return 2
    from marl.cli import enable_compile_cache

    enable_compile_cache()
    root = Path(args.root) / args.budget
    t0 = time.time()
    results = {f: family_results(root, f, budget, args.wandb) for f in families}
    md = tables(results)
    print(md)
    out = {"budget": args.budget, **budget, "results": results, "wall_s": time.time() - t0}
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    (root / "results.md").write_text(md + "\n")
    print(f"\n{root / 'results.json'}  ({out['wall_s'] / 60:.0f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
