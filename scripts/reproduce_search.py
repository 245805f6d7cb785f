"""Reproduce the update-equivalence claims of MD / MMD search (Sokota et al., ICLR 2024).

Prints, as tables, and writes to ``runs/reproduce_search/<budget>/results.json``:

1. Update equivalence on Kuhn poker: with exact beliefs and exact action values the searched
   policy at every information state against one behavioural-form MMD update of a random
   blueprint (values from OpenSpiel's own tree walk), for MD and MMD; the largest difference.
2. OpenSpiel anchors through our evaluation: Kuhn uniform exploitability (0.458333), Leduc
   uniform NashConv (4.747222).
3. MMD search from the uniform blueprint, applied at every information state and iterated, on
   Kuhn, Leduc and 2x2 dark Hex: exploitability after each round for a few (eta, alpha);
   and one round with sampled beliefs and rollouts (the decision-time setting) on Kuhn.
4. Tiny Hanabi A-F: MD search from the uniform blueprint at every decision point, iterated:
   whether the expected return rises monotonically, and how close it ends to the optimum.
5. Hanabi (``hanabi/small``: 2 colours x 3 ranks, hands of 3): IPPO blueprints trained with
   ``marl train`` (several seeds), then games with MD search on top against the blueprint
   alone on the same deals: mean score with 95% bootstrap CIs and the time per move.

    python scripts/reproduce_search.py --budget small    # ~30 min on a 2-core CPU
    python scripts/reproduce_search.py --budget paper    # more rounds, games and seeds (GPU)

The blueprint run is reused when it has finished (``final.json``), so a rerun only searches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("WANDB_SILENT", "true")
from marl.cli import enable_compile_cache, single_thread_eigen  # noqa: E402

single_thread_eigen()

BUDGETS = {
    "small": {
        "openspiel": {
            "kuhn_poker": 10,
            "leduc_poker": 5,
            "dark_hex(num_cols=2,num_rows=2)": 10,
        },
        "mmd_settings": [(1.0, 0.1), (0.5, 0.5), (2.0, 0.05)],
        "sampled": {"samples": 16, "rollouts": 4},
        "tiny_etas": [0.25, 1.0],
        "tiny_rounds": 60,
        "hanabi_steps": 5_000_000,
        "hanabi_seeds": 3,
        "hanabi_games": 128,
        "hanabi_search": {
            "eta": 20.0,
            "samples": 16,
            "rollouts": 1,
            "rollout": "argmax",
            "likelihood": "policy",
        },
        "hanabi_etas": [1.0, 5.0],  # also on the first blueprint
        "hanabi_likelihoods": ["greedy", "none"],  # also on the first blueprint
    },
    "paper": {
        "openspiel": {
            "kuhn_poker": 100,
            "leduc_poker": 50,
            "dark_hex(num_cols=2,num_rows=2)": 100,
        },
        "mmd_settings": [(1.0, 0.1), (0.5, 0.5), (2.0, 0.05), (1.0, 1.0)],
        "sampled": {"samples": 64, "rollouts": 16},
        "tiny_etas": [0.1, 0.25, 1.0],
        "tiny_rounds": 300,
        "hanabi_steps": 50_000_000,
        "hanabi_seeds": 5,
        "hanabi_games": 2000,
        "hanabi_search": {
            "eta": 20.0,
            "samples": 64,
            "rollouts": 4,
            "rollout": "argmax",
            "likelihood": "policy",
        },
        "hanabi_etas": [1.0, 5.0, 100.0],
        "hanabi_likelihoods": ["greedy", "none"],
    },
}


def _random_tabular(game, seed: int = 0):
    import numpy as np
    from open_spiel.python import policy as osp

    pol = osp.TabularPolicy(game)
    x = np.random.default_rng(seed).uniform(0.05, 1, pol.action_probability_array.shape)
    x = x * pol.legal_actions_mask
    pol.action_probability_array = x / x.sum(1, keepdims=True)
    return pol


def equivalence() -> dict:
    """Max |searched - one MMD update| over Kuhn's information states (random blueprint)."""
    import numpy as np
    from open_spiel.python.algorithms import action_value

    from marl.agents.search import SearchConfig
    from marl.agents.search_openspiel import OpenSpielSearch, load_game

    game = load_game("kuhn_poker")
    pol = _random_tabular(game, seed=0)
    calc = action_value.TreeWalkCalculator(game)
    calc.compute_all_states_action_values([pol, pol])
    out = {}
    for kind, eta, alpha in (("md", 1.0, 0.0), ("mmd", 1.0, 0.1), ("mmd", 0.3, 2.0)):
        search = OpenSpielSearch(game, pol, SearchConfig(kind, eta, alpha, "uniform", 0, 0))
        worst = 0.0
        for info, idx in pol.state_lookup.items():
            key = (search.info_player[info], info)
            q = calc.info_state_cf_prob_by_q_sum[key] / calc.info_state_cf_prob[key]
            pi = pol.action_probability_array[idx]
            legal = pol.legal_actions_mask[idx].astype(bool)
            z = np.log(pi) + eta * alpha * np.log(1.0 / legal.sum()) + eta * q
            z = np.where(legal, z / (1 + eta * alpha), -np.inf)
            ref = np.exp(z - z.max())
            ref /= ref.sum()
            worst = max(worst, float(np.abs(search.searched_probs(info)[0] - ref).max()))
        out[f"{kind} eta={eta} alpha={alpha}"] = worst
    return out


def anchors() -> dict:
    from open_spiel.python import policy as osp
    from open_spiel.python.algorithms import exploitability

    from marl.agents.search_openspiel import load_game

    kuhn, leduc = load_game("kuhn_poker"), load_game("leduc_poker")
    return {
        "kuhn uniform exploitability": exploitability.exploitability(
            kuhn, osp.UniformRandomPolicy(kuhn)
        ),
        "leduc uniform NashConv": exploitability.nash_conv(leduc, osp.UniformRandomPolicy(leduc)),
    }


def adversarial(b: dict) -> dict:
    from marl.agents.search import SearchConfig
    from marl.search import openspiel_iterate

    out = {}
    for game, rounds in b["openspiel"].items():
        for eta, alpha in b["mmd_settings"]:
            t = time.perf_counter()
            cfg = SearchConfig("mmd", eta, alpha, "uniform", 0, 0)
            r = openspiel_iterate(game, cfg, rounds)
            out[f"{game} eta={eta} alpha={alpha}"] = {
                "exploitability": r["exploitability"],
                "seconds": time.perf_counter() - t,
            }
            print(f"  {game} eta={eta} alpha={alpha}: {r['exploitability'][-1]:.4f}", flush=True)
        s = b["sampled"]
        cfg = SearchConfig("mmd", 1.0, 0.1, "uniform", s["samples"], s["rollouts"])
        r = openspiel_iterate(game, cfg, 1)
        out[f"{game} sampled {s['samples']}x{s['rollouts']} eta=1.0 alpha=0.1"] = {
            "exploitability": r["exploitability"]
        }
    return out


def cooperative(b: dict) -> dict:
    import numpy as np

    from marl.search import tiny_hanabi_md

    out = {}
    for eta in b["tiny_etas"]:
        for g in "ABCDEF":
            r = tiny_hanabi_md(g, eta, b["tiny_rounds"])
            rs = np.array(r["returns"])
            out[f"{g} eta={eta}"] = {
                "returns": r["returns"],
                "optimum": r["optimum"],
                "monotone": bool(np.all(np.diff(rs) >= -1e-5)),
                "largest_drop": float(-min(0.0, np.diff(rs).min())),
            }
    return out


def hanabi(b: dict, root: Path) -> dict:
    """IPPO blueprints on hanabi/small, then MD search on top, on the same deals."""
    from marl.agents.search import SearchConfig
    from marl.cli import main as marl_main
    from marl.search import mean_ci

    exp = root / "blueprint-hanabi_small"
    runs = sorted(p for p in exp.glob("*/") if (p / "final.json").is_file()) if exp.is_dir() else []
    runs = [p for p in runs if _seeds(p) >= b["hanabi_seeds"]]
    if not runs:
        argv = [
            "train",
            "env=hanabi/small",
            "algo=ippo",
            f"total_timesteps={b['hanabi_steps']}",
            f"num_seeds={b['hanabi_seeds']}",
            "num_envs=128",
            "algo.network.hidden=[128,128]",
            "algo.network.activation=relu",
            f"logger.root={root}",
            "experiment=blueprint-hanabi_small",
            "logger.progress=false",
        ]
        print("  training the blueprints: marl " + " ".join(argv), flush=True)
        if marl_main(argv) != 0:
            raise SystemExit("blueprint training failed")
        runs = sorted(p for p in exp.glob("*/") if (p / "final.json").is_file())
    run = runs[-1]
    hs = b["hanabi_search"]
    out = {"blueprint_run": str(run), "search": hs, "seeds": {}, "variants": {}}
    like = hs["likelihood"]
    jobs = [(seed, hs["eta"], like) for seed in range(b["hanabi_seeds"])]
    jobs += [(0, eta, like) for eta in b["hanabi_etas"]]
    jobs += [(0, hs["eta"], lk) for lk in b["hanabi_likelihoods"]]
    for seed, eta, lk in jobs:
        cfg = SearchConfig(
            "md", eta, 0.0, "uniform", hs["samples"], hs["rollouts"], "argmax", hs["rollout"]
        )
        r = _hanabi_games(run, seed, cfg, b["hanabi_games"], lk)
        if (eta, lk) == (hs["eta"], like):
            out["seeds"][seed] = r
        else:
            out["variants"][f"0, eta {eta}, {lk} likelihood"] = r
        print(
            f"  seed {seed} eta {eta} {lk}: search {r['search']['mean']:.3f} blueprint "
            f"{r['blueprint']['mean']:.3f} diff {r['difference']['mean']:+.3f} "
            f"[{r['difference']['ci_low']:+.3f}, {r['difference']['ci_high']:+.3f}]",
            flush=True,
        )
    per_seed = {
        k: [v[k]["mean"] for v in out["seeds"].values()]
        for k in ("search", "blueprint", "difference")
    }
    out["over_seeds"] = {k: mean_ci(v) for k, v in per_seed.items()}
    return out


def _hanabi_games(run: Path, seed: int, cfg, games: int, likelihood: str) -> dict:
    """``games`` games of hanabi/small with MD search and, on the same deals, without."""
    import numpy as np

    from marl.agents.search import JaxSearch
    from marl.agents.search_beliefs import hanabi_belief
    from marl.search import load_blueprint, mean_ci, play_against_blueprint

    bp, env = load_blueprint(run, "hanabi/small", {}, None, seed)
    search = JaxSearch(env, bp, cfg, max_depth=40)
    belief = hanabi_belief(env, bp, likelihood)
    g = play_against_blueprint(search, bp, belief, games, 32, seed=1000 + seed)
    scores = g["scores"]
    diff = np.array(scores["search"]) - np.array(scores["blueprint"])
    return {
        "eta": cfg.eta,
        "likelihood": likelihood,
        "games": len(diff),
        "search": mean_ci(scores["search"]),
        "blueprint": mean_ci(scores["blueprint"]),
        "difference": mean_ci(diff),
        "seconds_per_move_search": g["seconds"]["search"] / g["steps"]["search"],
        "seconds_per_move_blueprint": g["seconds"]["blueprint"] / g["steps"]["blueprint"],
        "compile_s": g["compile_s"],
    }


def _seeds(run: Path) -> int:
    from omegaconf import OmegaConf

    return int(OmegaConf.load(run / "config.yaml").get("num_seeds", 1))


def _ci(c: dict) -> str:
    return f"{c['mean']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"


def report(res: dict) -> str:
    lines = ["## 1. Update equivalence (Kuhn, exact beliefs and values, random blueprint)", ""]
    lines += ["| update | max abs difference over information states |", "|---|---|"]
    lines += [f"| {k} | {v:.2e} |" for k, v in res.get("equivalence", {}).items()]
    lines += ["", "## 2. OpenSpiel anchors (our evaluation)", ""]
    lines += [f"- {k}: {v:.6f}" for k, v in res.get("anchors", {}).items()]
    lines += ["", "## 3. MMD search from uniform, iterated: exploitability", ""]
    lines += [
        "| game, setting | uniform | round 1 | round 2 | lowest (round) | last (round) |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in res.get("adversarial", {}).items():
        e = v["exploitability"]
        cells = [f"{x:.4f}" for x in e[:3]] + ["-"] * (3 - min(3, len(e)))
        best = min(range(len(e)), key=e.__getitem__)
        lines.append(
            f"| {k} | {' | '.join(cells[:3])} | {e[best]:.4f} ({best}) | "
            f"{e[-1]:.4f} ({len(e) - 1}) |"
        )
    lines += ["", "## 4. Tiny Hanabi: MD search from uniform, iterated (exact return)", ""]
    lines += [
        "| game, eta | start | after 1 | last | optimum | monotone |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in res.get("cooperative", {}).items():
        r = v["returns"]
        lines.append(
            f"| {k} | {r[0]:.3f} | {r[1]:.3f} | {r[-1]:.3f} ({len(r) - 1}) | "
            f"{v['optimum']:.3f} | {'yes' if v['monotone'] else 'no'} |"
        )
    h = res.get("hanabi")
    if h:
        s = h["search"]
        lines += [
            "",
            f"## 5. hanabi/small: MD search (eta {s['eta']}, {s['samples']} belief samples x "
            f"{s['rollouts']} rollouts, {s['rollout']} blueprint in rollouts, "
            f"{s['likelihood']} likelihood) vs the blueprint",
            "",
            "| blueprint seed | blueprint | with search | difference | s/move search | s/move bp |",
            "|---|---|---|---|---|---|",
        ]
        rows = [(str(k), r) for k, r in h["seeds"].items()]
        rows += list(h.get("variants", {}).items())
        for name, r in rows:
            lines.append(
                f"| {name} | {_ci(r['blueprint'])} | {_ci(r['search'])} | "
                f"{_ci(r['difference'])} | {r['seconds_per_move_search']:.3f} | "
                f"{r['seconds_per_move_blueprint']:.4f} |"
            )
        o = h["over_seeds"]
        lines.append(
            f"| over seeds | {_ci(o['blueprint'])} | {_ci(o['search'])} "
            f"| {_ci(o['difference'])} | | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    p.add_argument(
        "--parts",
        default="equivalence,anchors,adversarial,cooperative,hanabi",
        help="comma-separated parts to run",
    )
    args = p.parse_args(argv)
    enable_compile_cache()
    b = BUDGETS[args.budget]
    root = Path("runs") / "reproduce_search" / args.budget
    root.mkdir(parents=True, exist_ok=True)
    path = root / "results.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    parts = args.parts.split(",")
    t0 = time.perf_counter()
    steps = {
        "equivalence": equivalence,
        "anchors": anchors,
        "adversarial": lambda: adversarial(b),
        "cooperative": lambda: cooperative(b),
        "hanabi": lambda: hanabi(b, root),
    }
    for part in parts:
        if part not in steps:
            raise SystemExit(f"unknown part {part!r}; parts: {', '.join(steps)}")
        print(f"[{time.perf_counter() - t0:.0f} s] {part}", flush=True)
        res[part] = steps[part]()
        path.write_text(json.dumps(res, indent=2))
    res["meta"] = {
        "budget": args.budget,
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - t0,
        "command": "python scripts/reproduce_search.py " + " ".join(argv or sys.argv[1:]),
    }
    path.write_text(json.dumps(res, indent=2))
    text = report(res)
    (root / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
