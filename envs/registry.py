"""Registry of pure-JAX environments: ``make(name, **kwargs)``.

Every entry builds an environment that follows JaxMARL's functional ``MultiAgentEnv``
protocol (``reset(key)``, ``step(key, state, actions)``, dicts per agent), so any JaxMARL
environment plugs in unchanged. :func:`make_array_env` wraps it in the array view
(:class:`marl.envs.jax_env.JaxArrayEnv`).

Names are ``family/scenario``: ``mpe/simple_spread``, ``smax/3m``, ``hanabi``, ... Families
whose agent count can vary say so in :attr:`EnvEntry.variants` (e.g. ``mpe/simple_spread``
with ``N=2..8``, ``smax/marines`` with ``N`` allies against ``M`` enemies), so later work can
train across them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from marl.errors import ConfigError, MarlError, unknown


@dataclass(frozen=True)
class EnvEntry:
    """One registered environment.

    Attributes:
        name: registry name.
        build: ``build(**kwargs) -> MultiAgentEnv``.
        description: one line for ``marl envs``.
        kwargs: accepted keyword arguments with their defaults (for validation and docs).
        variants: keyword sets that give the family's agent-count variants.
        win: ``win(env, terminal_state) -> bool array`` where the environment has a win.
        alive: ``alive(env, state) -> [A] bool`` where agents can be dead in a state that
            starts an episode (used by :meth:`JaxArrayEnv.restart_from`).
        array_build: ``array_build(agent_id=..., **kwargs)`` for entries that are array
            environments themselves rather than one ``MultiAgentEnv`` (``population/*``).
        listed: shown by ``marl envs`` (not ``attack``, which needs a trained run to build).
    """

    name: str
    build: Callable[..., Any]
    description: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    variants: tuple[dict[str, Any], ...] = ()
    win: Callable[[Any, Any], Any] | None = None
    alive: Callable[[Any, Any], Any] | None = None
    array_build: Callable[..., Any] | None = None
    listed: bool = True


class LazyKwargs(Mapping):
    """An entry's keyword defaults, read from the environment's class on first use: the
    registry is built at import without importing every JaxMARL family."""

    def __init__(self, read: Callable[[], dict[str, Any]]):
        self._read, self._kwargs = read, None

    def _get(self) -> dict[str, Any]:
        if self._kwargs is None:
            self._kwargs = self._read()
        return self._kwargs

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())


_REGISTRY: dict[str, EnvEntry] = {}


def register(entry: EnvEntry) -> EnvEntry:
    """Add an environment to the registry (a name may be registered once)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"environment {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def names() -> list[str]:
    """Sorted registered names."""
    return sorted(_REGISTRY)


def entry(name: str) -> EnvEntry:
    """The registry entry of ``name``; an unknown name fails with the closest valid names."""
    if name not in _REGISTRY:
        raise unknown("environment", name, _REGISTRY)
    return _REGISTRY[name]


def _check_kwargs(e: EnvEntry, kwargs: dict[str, Any]) -> None:
    bad = sorted(set(kwargs) - set(e.kwargs))
    if bad:
        raise unknown(f"argument of {e.name}:", bad[0], e.kwargs)


def _check_variants(e: EnvEntry, kwargs: dict[str, Any]) -> None:
    """A keyword that selects a variant (``N`` of ``mpe/simple_spread``) takes the listed
    values only: ``N=99`` would otherwise end in an out-of-memory error deep in XLA."""
    for key in sorted({k for v in e.variants for k in v}):
        v = kwargs.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            continue  # None (the default) or a bad value: the builder says what is wrong
        allowed = sorted({v[key] for v in e.variants if key in v})
        if kwargs[key] not in allowed:
            raise ConfigError(
                f"{e.name}: {key}={kwargs[key]!r} is not one of its variants "
                f"({key} = {', '.join(map(str, allowed))})"
            )


def check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Validate ``name`` and its keywords (names and listed variants) without building."""
    e = entry(name)
    _check_kwargs(e, kwargs)
    _check_variants(e, kwargs)


def make(name: str, **kwargs: Any) -> Any:
    """Build the registered pure-JAX environment ``name`` (JaxMARL ``MultiAgentEnv`` protocol).

    Raises:
        UnknownNameError: unknown name or keyword (the message names the closest valid ones).
        ConfigError: a keyword value the environment rejects, or outside the listed variants.
    """
    e = entry(name)
    _check_kwargs(e, kwargs)
    _check_variants(e, kwargs)
    if e.array_build is not None:
        raise ConfigError(f"{name} plays several games at once: build it with make_array_env")
    try:
        env = e.build(**kwargs)
    except (AssertionError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"cannot build {name} with {kwargs}: {err}") from err
    env._marl_name = name  # noqa: SLF001 - lets the array view report the registry name
    return env


def make_array_env(name: str, *, agent_id: bool = True, **kwargs: Any):
    """``make(name, **kwargs)`` wrapped in the array view (:class:`JaxArrayEnv`)."""
    from marl.envs.jax_env import JaxArrayEnv

    e = entry(name)
    if e.array_build is not None:
        _check_kwargs(e, kwargs)
        try:
            return e.array_build(agent_id=agent_id, **kwargs)
        except MarlError:  # already one clear line (an attack's victims, say)
            raise
        except (AssertionError, ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"cannot build {name} with {kwargs}: {err}") from err
    return JaxArrayEnv(make(name, **kwargs), agent_id=agent_id, win=e.win, alive=e.alive, name=name)


# --------------------------------------------------------------------------------------------
# Built-in entries
# --------------------------------------------------------------------------------------------


def _defaults(cls: type, *skip: str) -> dict[str, Any]:
    """Named keyword arguments of ``cls.__init__`` and of its bases' (``**kwargs`` followed)."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            out[p.name] = None if p.default is p.empty else p.default
    for s in skip:
        out.pop(s, None)
    return out


# Parameters JaxMARL derives itself; passing them would only break the environment.
_MPE_INTERNAL = (
    "agents",
    "landmarks",
    "action_spaces",
    "observation_spaces",
    "colour",
    "dim_c",
    "dim_p",
    "rad",
    "moveable",
    "silent",
    "collide",
    "mass",
    "accel",
    "max_speed",
    "u_noise",
    "c_noise",
    "damping",
    "contact_force",
    "contact_margin",
)


def _mpe(scenario: str, jaxmarl_id: str, description: str, variants=(), n_keys=()):
    def build(continuous: bool = False, N: int | None = None, max_steps: int = 25, **kw: Any):
        if N is not None:
            if not isinstance(N, int) or N < 1:
                raise ConfigError(f"mpe/{scenario}: N must be a positive integer, got {N!r}")
            for key in n_keys:
                kw[key] = N
        # Explicit either way: some JaxMARL scenarios (simple_world_comm) default to continuous.
        kw["action_type"] = "Continuous" if continuous else "Discrete"
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigError(f"mpe/{scenario}: max_steps must be a positive integer")
        # JaxMARL's MPE tests the time limit before counting the step, so its episodes last
        # max_steps + 1 steps; mpe2 (and the MPE papers) run max_cycles = 25 steps. Ask for
        # one less so that an episode here lasts exactly `max_steps`, as in mpe2.
        env = _mpe_class(jaxmarl_id)(max_steps=max_steps - 1, **kw)
        env.episode_limit = max_steps
        return env

    def kwargs() -> dict[str, Any]:
        cls = _mpe_class(jaxmarl_id)
        kw = {"continuous": False, **_defaults(cls, *_MPE_INTERNAL, "num_entities", "action_type")}
        return {**kw, "N": None} if n_keys else kw

    register(EnvEntry(f"mpe/{scenario}", build, description, LazyKwargs(kwargs), tuple(variants)))


_MPE_CLASSES = {  # JaxMARL id -> (module of jaxmarl.environments.mpe, class)
    "MPE_simple_v3": ("simple", "SimpleMPE"),
    "MPE_simple_spread_v3": ("simple_spread", "SimpleSpreadMPE"),
    "MPE_simple_tag_v3": ("simple_tag", "SimpleTagMPE"),
    "MPE_simple_world_comm_v3": ("simple_world_comm", "SimpleWorldCommMPE"),
    "MPE_simple_speaker_listener_v4": ("simple_speaker_listener", "SimpleSpeakerListenerMPE"),
    "MPE_simple_reference_v3": ("simple_reference", "SimpleReferenceMPE"),
    "MPE_simple_adversary_v3": ("simple_adversary", "SimpleAdversaryMPE"),
    "MPE_simple_push_v3": ("simple_push", "SimplePushMPE"),
    "MPE_simple_crypto_v3": ("simple_crypto", "SimpleCryptoMPE"),
}


def _mpe_class(jaxmarl_id: str) -> type:
    """The scenario's class, importing its module only (not the whole MPE package)."""
    import importlib

    module, cls = _MPE_CLASSES[jaxmarl_id]
    return getattr(importlib.import_module(f"jaxmarl.environments.mpe.{module}"), cls)


def _smax_win(env: Any, state: Any) -> Any:
    """All enemies dead while an ally is alive (JaxMARL's SMAX wrapper state)."""
    alive = state.state.unit_alive
    return alive[: env.num_allies].any() & ~alive[env.num_allies :].any()


def _smax_alive(env: Any, state: Any) -> Any:
    return state.state.unit_alive[: env.num_allies]


def _smax_env(cls: type, scenario: Any, max_steps: int = 100, **kw: Any) -> Any:
    """SMAX with episodes of exactly ``max_steps`` steps: JaxMARL's SMAX tests its time limit
    before counting the step (as its MPE does), so ask it for one less."""
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(f"SMAX: max_steps must be a positive integer, got {max_steps!r}")
    env = cls(scenario=scenario, max_steps=max_steps - 1, **kw)
    env.episode_limit = max_steps
    return env


def _smax(map_name: str, description: str) -> None:
    def build(**kw: Any):
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario

        return _smax_env(HeuristicEnemySMAX, map_name_to_scenario(map_name), **kw)

    kwargs = LazyKwargs(_smax_kwargs)
    register(
        EnvEntry(f"smax/{map_name}", build, description, kwargs, win=_smax_win, alive=_smax_alive)
    )


def _smax_kwargs() -> dict[str, Any]:
    from jaxmarl.environments.smax import SMAX

    kw = _defaults(
        SMAX, "num_allies", "num_enemies", "scenario", "unit_type_names", "unit_type_shorthands"
    )
    return {**kw, "enemy_shoots": True, "attack_mode": "closest"}


def _smax_marines() -> None:
    def build(N: int = 3, M: int | None = None, **kw: Any):
        import jax.numpy as jnp
        from jaxmarl.environments.smax import HeuristicEnemySMAX
        from jaxmarl.environments.smax.smax_env import Scenario

        M = N if M is None else M
        for key, v in (("N", N), ("M", M)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"smax/marines: {key} must be a positive integer, got {v!r}")
        scenario = Scenario(jnp.zeros((N + M,), dtype=jnp.uint8), N, M, False, False)
        return _smax_env(HeuristicEnemySMAX, scenario, **kw)

    kwargs = LazyKwargs(lambda: {"N": 3, "M": None, **_smax_kwargs()})
    variants = tuple({"N": n} for n in range(1, 11))
    register(
        EnvEntry(
            "smax/marines",
            build,
            "N marines vs M marines (default M = N)",
            kwargs,
            variants,
            win=_smax_win,
            alive=_smax_alive,
        )
    )


def _hanabi_cards_of_rank(num_ranks: int) -> Any:
    """Copies of each rank per colour: the standard 3, 2, .., 2, 1 for any number of ranks."""
    import numpy as np

    if not isinstance(num_ranks, int) or num_ranks < 2:
        raise ConfigError(f"hanabi: num_ranks must be an integer >= 2, got {num_ranks!r}")
    return np.array([3] + [2] * (num_ranks - 2) + [1])


def _hanabi() -> None:
    from jaxmarl.environments.hanabi import Hanabi

    def build(num_ranks: int = 5, **kw: Any):
        return Hanabi(num_ranks=num_ranks, num_cards_of_rank=_hanabi_cards_of_rank(num_ranks), **kw)

    # A CPU-sized Hanabi for search experiments: 2 colours x 3 ranks (12 cards, perfect
    # score 6), hands of 3, 3 information tokens and 2 lives.
    small = {
        "num_colors": 2,
        "num_ranks": 3,
        "hand_size": 3,
        "max_info_tokens": 3,
        "max_life_tokens": 2,
    }

    def build_small(**kw: Any):
        return build(**{**small, **kw})

    kwargs = _defaults(
        Hanabi,
        "agents",
        "action_spaces",
        "observation_spaces",
        "num_moves",
        "color_map",
        "num_cards_of_rank",
    )
    register(
        EnvEntry(
            "hanabi",
            build,
            "Hanabi card game (2-5 players, turn-based)",
            kwargs,
            tuple({"num_agents": n} for n in (2, 3, 4, 5)),
        )
    )
    register(
        EnvEntry(
            "hanabi/small",
            build_small,
            "Hanabi, 2 colours x 3 ranks, hands of 3 (CPU-sized, for search)",
            {**kwargs, **small},
        )
    )


def _tiny_hanabi() -> None:
    from marl.envs.tiny_hanabi import TinyHanabi, games

    for g, data in games().items():

        def build(_g: str = g, **kw: Any):
            return TinyHanabi(_g, **kw)

        register(
            EnvEntry(
                f"tiny_hanabi/{g}",
                build,
                f"tiny Hanabi game {g}: 2 players, private cards, one public action each "
                f"(optimum {data['optimal_return']:.4g})",
                {},
            )
        )


def _population(family: str):
    def build(*, agent_id: bool = False, **kw: Any):
        from marl.envs.population import PopulationEnv  # imports JAX: only when built

        return PopulationEnv(family, agent_id=agent_id, **kw)

    return build


def _occupy() -> None:
    def build(N: int = 4, **kw: Any):
        from marl.envs.occupy import ResourceOccupation

        return ResourceOccupation(num_agents=N, **kw)

    occupy_kwargs = {"N": 4, "max_steps": 25, "min_size": 0.1, "max_size": 0.3, "shaping": 0.1}
    register(
        EnvEntry(
            "occupy",
            build,
            "N agents hold N resources of different sizes; occupants share a resource's value",
            occupy_kwargs,
            tuple({"N": n} for n in range(2, 13)),
        )
    )

    def refuse(**kw: Any):
        raise ConfigError("population environments are array environments")

    occupy_extra = {k: v for k, v in occupy_kwargs.items() if k not in ("N", "max_steps")}
    for family, base, extra in (
        ("spread", "mpe/simple_spread", {}),
        ("occupy", "occupy", occupy_extra),
    ):
        register(
            EnvEntry(
                f"population/{family}",
                refuse,
                f"{base} with several agent counts at once, in one padded entity layout",
                {"agents": [3, 4, 5], "max_agents": None, "max_steps": 25, **extra},
                array_build=_population(family),
            )
        )


def _attack() -> None:
    def build(*, agent_id: bool = False, **kw: Any):
        from marl.attack import make_attack_env  # loads the victims' run: only when built

        return make_attack_env(agent_id=agent_id, **kw)

    def refuse(**kw: Any):
        raise ConfigError("env=attack is an array environment (marl attack)")

    register(
        EnvEntry(
            "attack",
            refuse,
            "a trained team (env.kwargs.victims=<run dir>) with one slot played by an "
            "adversary (marl attack)",
            {
                "victims": None,
                "slot": 0,
                "step": None,
                "seed": 0,
                "greedy": False,
                "mode": "adversary",
            },
            array_build=build,
            listed=False,
        )
    )


def _register_builtins() -> None:
    spread_variants = tuple({"N": n} for n in range(2, 9))
    _mpe("simple", "MPE_simple_v3", "one agent reaches a landmark")
    _mpe(
        "simple_spread",
        "MPE_simple_spread_v3",
        "N agents cover N landmarks, avoiding collisions (cooperative)",
        spread_variants,
        ("num_agents", "num_landmarks"),
    )
    _mpe("simple_tag", "MPE_simple_tag_v3", "predators chase prey around obstacles (heterogeneous)")
    _mpe(
        "simple_world_comm",
        "MPE_simple_world_comm_v3",
        "predators with a leader, prey, food and forests (heterogeneous)",
    )
    _mpe(
        "simple_speaker_listener",
        "MPE_simple_speaker_listener_v4",
        "a speaker guides a listener to a landmark (heterogeneous)",
    )
    _mpe("simple_reference", "MPE_simple_reference_v3", "two agents guide each other to landmarks")
    _mpe(
        "simple_adversary",
        "MPE_simple_adversary_v3",
        "good agents hide the goal from an adversary (heterogeneous)",
    )
    _mpe("simple_push", "MPE_simple_push_v3", "an adversary pushes an agent off its goal")
    _mpe("simple_crypto", "MPE_simple_crypto_v3", "encrypted communication against an eavesdropper")
    for m, d in (
        ("3m", "3 marines vs 3"),
        ("8m", "8 marines vs 8"),
        ("25m", "25 marines vs 25"),
        ("2s3z", "2 stalkers 3 zealots vs the same"),
        ("3s5z", "3 stalkers 5 zealots vs the same"),
        ("5m_vs_6m", "5 marines vs 6 (hard)"),
        ("10m_vs_11m", "10 marines vs 11"),
        ("27m_vs_30m", "27 marines vs 30"),
        ("3s5z_vs_3s6z", "3s5z vs 3s6z"),
        ("3s_vs_5z", "3 stalkers vs 5 zealots"),
        ("6h_vs_8z", "6 hydralisks vs 8 zealots"),
        ("smacv2_5_units", "SMACv2-style random 5 units"),
        ("smacv2_10_units", "SMACv2-style random 10 units"),
        ("smacv2_20_units", "SMACv2-style random 20 units"),
    ):
        _smax(m, f"SMAX {d}, heuristic enemy")
    _smax_marines()
    _occupy()
    _attack()
    _hanabi()
    _tiny_hanabi()


_register_builtins()
