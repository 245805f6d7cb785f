"""The ``marl`` command line.

``marl envs`` lists the registered environments. Every user error (:class:`MarlError`) ends
with one line on stderr and a non-zero exit code, never a bare traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from marl.errors import ConfigError, MarlError, first_line


def _cmd_envs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from marl import envs

    names = args.names or [n for n in envs.names() if envs.entry(n).listed]
    rows = []
    for name in names:
        e = envs.entry(name)
        # population environments have no fixed agent ids (envs/population.py)
        spec = envs.make_array_env(name, agent_id=e.array_build is None).spec
        rows.append((e, spec))
    if args.json:
        out = [
            {
                **spec.describe(),
                "description": e.description,
                "kwargs": {k: v for k, v in e.kwargs.items() if _jsonable(v)},
                "variants": list(e.variants),
            }
            for e, spec in rows
        ]
        print(json.dumps(out, indent=2))
        return 0
    table = Table(title="Pure-JAX environments (marl.envs.make); arrays per copy")
    for col in ("name", "agents", "obs [A, D]", "actions [A, nA]", "state", "notes"):
        table.add_column(col, overflow="fold")
    for e, spec in rows:
        agents = (
            ", ".join(spec.agents)
            if spec.num_agents <= 4
            else (f"{spec.agents[0]} .. {spec.agents[-1]}")
        )
        notes = []
        if spec.heterogeneous:
            notes.append("heterogeneous (padded)")
        if spec.turn_based:
            notes.append("turn-based")
        if spec.has_win:
            notes.append("win rate")
        if e.variants:
            keys = sorted({k for v in e.variants for k in v})
            notes.append(f"variants: {', '.join(keys)}")
        kind = "discrete" if spec.action_type == "discrete" else "continuous"
        table.add_row(
            e.name,
            f"{spec.num_agents}: {agents}",
            f"[{spec.num_agents}, {spec.obs_dim}]",
            f"[{spec.num_agents}, {spec.num_actions}] {kind}",
            f"[{spec.state_dim}] {spec.state_source}",
            "; ".join(notes) or e.description,
        )
    Console(width=max(130, Console().width)).print(table)
    print("Any PettingZoo environment: marl.envs.pettingzoo_vector_env(env_fn, num_envs)")
    print("A trained team with one slot played by an adversary: env=attack (marl attack)")
    return 0


def _jsonable(v: object) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _cmd_train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from marl.config import compose

    if args.multirun:
        from marl.sweep import run_sweep

        sweep_dir, code = run_sweep(args.overrides, args.jobs, dry_run=args.dry_run)
        if not args.dry_run:
            print(sweep_dir)
        return code
    if args.jobs is not None or args.dry_run:
        raise ConfigError("--jobs and --dry-run are for sweeps: use them with -m")
    cfg = compose(args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    from marl.parallel import init_distributed

    # first: anything that starts JAX's backend (importing jaxmarl, setting up the
    # compilation cache) must come after joining a multi-process run
    d = cfg.distributed
    init_distributed(d.coordinator, int(d.num_processes), int(d.process_id))
    enable_compile_cache()
    from marl.trainer import train

    try:
        run_dir = train(cfg)
    except Exception as err:
        if _out_of_memory(err):
            raise ConfigError(
                f"out of memory for the training batch ({first_line(err, 160)}); lower num_envs "
                f"(now {cfg.num_envs}), num_seeds ({cfg.num_seeds}) or algo.rollout_len "
                f"({cfg.algo.rollout_len}), or the environment's size (env.kwargs)"
            ) from None
        raise
    print(run_dir)
    return 0


def _out_of_memory(err: BaseException) -> bool:
    """XLA's allocation failure (``RESOURCE_EXHAUSTED``) or Python's ``MemoryError``."""
    return isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in str(err)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    enable_compile_cache()
    from marl.evaluate import evaluate_run, split_adapt

    overrides, adapt = split_adapt(args.overrides)
    result = evaluate_run(
        args.run_dir,
        episodes=args.episodes,
        greedy=args.greedy,
        env_overrides=overrides,
        step=args.step,
        adapt=adapt or None,
    )
    print(json.dumps(result, indent=2))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from marl.config import compose_search

    cfg = compose_search(args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    enable_compile_cache()
    from marl.search import run_search

    print(run_search(cfg))
    return 0


def _cmd_attack(args: argparse.Namespace) -> int:
    from marl.attack import plan_attack

    if args.cfg:
        from omegaconf import OmegaConf

        plan = plan_attack(args.overrides)
        print(OmegaConf.to_yaml(plan.attack, resolve=True), end="")
        print(OmegaConf.to_yaml(plan.train, resolve=True), end="")
        return 0
    enable_compile_cache()
    from marl.attack import run_attack

    print(run_attack(args.overrides))
    return 0


def _cmd_attack_eval(args: argparse.Namespace) -> int:
    from marl.attack import attack_eval

    attack_eval(args.run_dirs, args.out, args.wandb)
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    enable_compile_cache()
    from marl.render import render_run

    result = render_run(args.run_dir, episodes=args.episodes, out=args.out, seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from marl.compare import cli as compare_cli

    return compare_cli(args.run_dirs, args.out, args.metric)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from marl.dashboard import cli as dashboard_cli

    return dashboard_cli(args.paths, args.out, args.publish, args.name)


def _cmd_bench(args: argparse.Namespace) -> int:
    from marl.bench import main as bench_main

    return bench_main(args.bench_args)


def enable_compile_cache() -> None:
    """Persistent XLA compilation cache: a second launch of a config skips its compile.

    Every program is cached, however fast it compiles (JAX's default floor is 1 s); the
    large ones are also kept traced and lowered by the program cache (marl/programs.py).
    """
    import jax

    cache = os.environ.get(
        "MARL_COMPILE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "marl", "jax")
    )
    if cache and cache != "0":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _hydra_command(sub, name: str, func, help: str, description: str):
    """A subcommand configured by Hydra overrides, with ``--cfg job``."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("overrides", nargs="*", help="key=value Hydra overrides")
    p.add_argument("--cfg", choices=["job"], help="print the resolved config and exit")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("envs", help="list the registered environments with their shapes")
    p.add_argument("names", nargs="*", help="only these environments")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_envs)

    p = _hydra_command(
        sub,
        "train",
        _cmd_train,
        "train from a config with Hydra overrides (-m: a sweep)",
        "marl train env=mpe/simple_spread algo=mappo seed=3 "
        "algo.lr=3e-4 num_seeds=4 (resume=<run dir> continues a run). "
        "marl train -m algo=ippo,mappo seed=0,1,2 runs the grid (Hydra multirun; "
        "hydra/launcher=joblib|submitit_local|submitit_slurm, hydra/sweeper=optuna).",
    )
    p.add_argument("-m", "--multirun", action="store_true", help="a sweep: one run per grid point")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="with -m: run N jobs at once in local processes, each pinned to cores/N cores",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="with -m: print the jobs (and a Slurm launcher's sbatch script), launch nothing",
    )

    p = sub.add_parser("evaluate", help="evaluate a saved run (also on a PettingZoo env)")
    p.add_argument("run_dir")
    p.add_argument(
        "overrides",
        nargs="*",
        help="env overrides, e.g. env=pz/mpe2_simple_spread env.workers=sync; with a latent "
        "policy (algo=mra) also adapt_steps=N adapt_episodes=N adapt_lr=X adapt=pg|select",
    )
    p.add_argument("--episodes", type=int, default=None, help="default: eval.episodes")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: last)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--greedy", dest="greedy", action="store_true", default=None)
    g.add_argument("--sampled", dest="greedy", action="store_false")
    p.set_defaults(func=_cmd_evaluate)

    _hydra_command(
        sub,
        "search",
        _cmd_search,
        "decision-time MD / MMD search on top of a blueprint, against the blueprint alone",
        "marl search env=hanabi/small blueprint=<run dir>|uniform search=md|mmd "
        "eta=1 samples=16 rollouts=1 episodes=64 (env=openspiel/kuhn_poker, tiny_hanabi/A, ...)",
    )

    _hydra_command(
        sub,
        "attack",
        _cmd_attack,
        "train an adversary in one slot of a trained team (AMI, Gleave, random, none)",
        "marl attack victims=<run dir> attack=ami|gleave|random|none|ami_untargeted|"
        "ami_bilateral adversary_slot=0 [total_timesteps=... num_seeds=... algo.*=...] "
        "(env=<name> checks the victims' environment; resume=<attack run dir> continues)",
    )
    p = sub.add_parser(
        "attack-eval", help="the attack report: victims' win rate / return per attack, 95% CIs"
    )
    p.add_argument("run_dirs", nargs="+", help="attack run directories (marl attack)")
    p.add_argument("--out", default=None, help="output directory (default: the runs' parent)")
    p.add_argument(
        "--wandb", default="offline", choices=["offline", "online", "disabled"], help="W&B mode"
    )
    p.set_defaults(func=_cmd_attack_eval)

    p = sub.add_parser("render", help="greedy episodes of a trained MPE / SMAX run as a GIF")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--out", default=None, help="file.gif or file.mp4 (default: <run>/videos/)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("compare", help="IQM with bootstrap CIs across runs, curves, table")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--metric", default="eval/episode_return")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "dashboard", help="the W&B workspace of an experiment or sweep (offline: its JSON spec)"
    )
    p.add_argument("paths", nargs="+", help="runs/<experiment>, a sweep directory or runs")
    p.add_argument("--out", default=None, help="spec file (default: <path>/dashboard.json)")
    p.add_argument("--name", default=None, help="the workspace's name")
    p.add_argument("--publish", action="store_true", help="upload it (needs a W&B login)")
    p.set_defaults(func=_cmd_dashboard)

    # `marl bench ...` hands every argument to the benchmark's own parser (see main)
    p = sub.add_parser("bench", help="speed benchmarks (scripts/bench.py); --help for options")
    p.set_defaults(func=_cmd_bench, bench_args=[])
    return parser


def single_thread_eigen() -> None:
    """Run XLA:CPU's Eigen kernels single-threaded unless ``XLA_FLAGS`` says otherwise.

    With the multi-threaded Eigen pool, long vmapped training programs (several seeds, a
    transformer's update) now and then never return on the CPU (jax 0.10.2: the main thread
    waits on a result the pool never delivers; seen here twice in one afternoon on MAT runs).
    Only the CPU backend reads the flag; call this before JAX starts its backend.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marl`` console script."""
    os.environ.setdefault("WANDB_SILENT", "true")
    single_thread_eigen()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        args = argparse.Namespace(command="bench", func=_cmd_bench, bench_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MarlError as err:
        print(f"marl {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"marl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
