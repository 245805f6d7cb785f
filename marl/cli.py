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

from marl.errors import MarlError


def _cmd_envs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from marl import envs

    names = args.names or envs.names()
    rows = []
    for name in names:
        e = envs.entry(name)
        spec = envs.make_array_env(name).spec
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
    return 0


def _jsonable(v: object) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("envs", help="list the registered environments with their shapes")
    p.add_argument("names", nargs="*", help="only these environments")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_envs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marl`` console script."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu") if not os.environ.get("MARL_GPU") else None
    parser = build_parser()
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
