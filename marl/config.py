"""Typed, validated configs composed with Hydra.

``configs/`` holds the Hydra groups (``env/``, ``algo/``) and the root ``config.yaml``; the
schema below types every key. :func:`compose` builds a config from command-line overrides
(``env=mpe/simple_spread algo=mappo seed=3 algo.lr=3e-4``) and turns every mistake (an unknown
key, a wrong type, an unknown env or algo) into one :class:`ConfigError` line naming the valid
choices.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from marl.errors import ConfigError, unknown
from marl.ppo import PPOConfig


@dataclass
class EnvConfig:
    name: str = "mpe/simple_spread"
    kind: str = "jax"  # jax | pettingzoo
    factory: str | None = None  # pettingzoo: "module:callable" returning the env
    kwargs: dict[str, Any] = field(default_factory=dict)
    agent_id: bool = True
    workers: str = "async"  # pettingzoo: async (processes) | sync (in process)
    num_workers: int | None = None  # pettingzoo worker processes (default: the cores given)


@dataclass
class NetworkSchema:
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    recurrent: bool = False
    gru_features: int = 64
    # transformers (MAT, CommFormer)
    embed_dim: int = 64
    num_blocks: int = 1
    num_heads: int = 1


@dataclass
class GraphSchema:
    """The communication graph of MAT-style policies (``marl.agents.mat.GraphConfig``)."""

    mode: str = "full"  # full (MAT) | learned (CommFormer) | none (self loops only)
    sparsity: float = 0.4  # S: k = max(int(N * S), 1) senders per receiver
    lr: float = 1e-4
    period: int = 5  # every period-th PPO epoch trains only the graph
    warmup: int = 10  # PPO updates on the raw soft mask first
    freeze: float = 0.0  # > 0: freeze the graph after this fraction of training
    temperature: float = 1.0


@dataclass
class LatentSchema:
    """MRA's per-agent latent (``marl.agents.mra.LatentConfig``)."""

    num: int = 6  # latents = relation heads; 1 is the unimodal ablation
    tau: float = 1.0  # Gumbel-softmax temperature (straight-through gradient)
    mi_coef: float = 0.05  # weight of the contrastive I(A; Z | O) term
    mi_samples: int = 5  # K latents resampled from the prior in that estimate
    classifier_coef: float = 0.1  # weight of the game classifier's cross-entropy
    mi_fraction: float = 0.25  # share of each minibatch's env copies in the MI estimate


@dataclass
class InfluenceSchema:
    """AMI's attacker learners and influence reward (``marl.agents.ami.InfluenceConfig``)."""

    # lambda, the weight of the influence term: None = 0.1 (discrete), 1.0 (continuous)
    coef: float | None = None
    samples: int = 10  # K adversary actions sampled from its policy per step
    target: str = "oracle"  # oracle (targeted AMI) | none (untargeted ablation)
    marginal: str = "policy"  # policy (unilateral) | realised (bilateral ablation)
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # victim model, oracle
    lr: float = 1e-3  # Adam of the victim model and the oracle (and its critic)
    epochs: int = 4  # passes over each rollout of the victim model and of the oracle
    max_grad_norm: float = 10.0
    standardise: bool = True  # the shaped reward, with running mean and variance
    # standardise subtracts the running mean too (the reference); false: divide by the
    # running standard deviation only (a mean shift rewards longer or shorter episodes)
    standardise_mean: bool = True


@dataclass
class AlgoConfig(PPOConfig):
    """The PPO hyperparameters (:class:`marl.ppo.PPOConfig`) and the policy's."""

    name: str = "mappo"
    centralised_critic: bool = True
    share_params: bool = True
    lr: float = 5e-4
    critic_lr: float | None = None
    anneal_lr: bool = True
    max_grad_norm: float = 0.5
    rollout_len: int = 128
    network: NetworkSchema = field(default_factory=NetworkSchema)
    graph: GraphSchema = field(default_factory=GraphSchema)
    gating: bool = False  # CommFormer's temporal receive gate
    gate_penalty: float = 0.0  # lambda * mean(gate) added to the loss
    gate_threshold: float = 0.5
    latent: LatentSchema = field(default_factory=LatentSchema)  # MRA
    influence: InfluenceSchema = field(default_factory=InfluenceSchema)  # AMI


@dataclass
class EvalConfig:
    num_evals: int = 10  # evenly spaced evaluations over training
    episodes: int = 32
    greedy: bool = True
    absolute_factor: int = 10  # the absolute metric re-evaluates the best params over 10 x E
    max_steps: int = 500  # cap on an evaluation episode where the env has no time limit
    video: bool = True  # the final evaluation draws one greedy episode (MPE, SMAX, PettingZoo)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "marl"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"


@dataclass
class LoggerConfig:
    root: str = "runs"
    progress: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class CheckpointConfig:
    every_evals: int = 1  # checkpoint at every k-th evaluation (and at the end)
    max_to_keep: int = 3


@dataclass
class DistributedConfig:
    coordinator: str | None = None  # host:port of process 0
    num_processes: int = 1
    process_id: int = 0


@dataclass
class TrainConfig:
    experiment: str | None = None  # default: <algo>-<env>
    seed: int = 0
    num_seeds: int = 1
    total_timesteps: int = 1_000_000
    num_envs: int = 16
    devices: str = "1"  # data-parallel over local devices: a count or "all"
    resume: str | None = None
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


@dataclass
class SearchSchema:
    """``marl search``'s update (:class:`marl.agents.search.SearchConfig`) and its play."""

    kind: str = "md"  # md (cooperative) | mmd (adversarial)
    eta: float = 1.0
    alpha: float = 0.0  # MMD temperature
    magnet: str = "uniform"  # uniform | blueprint
    samples: int = 16  # belief samples (0: exact belief, OpenSpiel games)
    rollouts: int = 1  # rollouts per (sample, action) (0: exact values where possible)
    play: str = "argmax"  # argmax | sample
    rollout: str = "sample"  # the blueprint in rollouts: sample | argmax
    likelihood: str = "policy"  # Hanabi belief: policy | greedy | none (partner's last action)
    max_depth: int | None = None  # rollout steps (default: the episode limit)
    players: list[int] | None = None  # seats that search (default: all)


@dataclass
class SearchRunConfig:
    """Root config of ``marl search`` (``configs/search_run.yaml``)."""

    experiment: str | None = None  # default: search-<kind>-<env>
    seed: int = 0
    env: EnvConfig = field(default_factory=EnvConfig)
    blueprint: str = "uniform"  # uniform | a run directory of `marl train`
    checkpoint_step: int | None = None  # the blueprint run's checkpoint (default: last)
    blueprint_seed: int = 0  # which of the run's seeds (num_seeds > 1) is the blueprint
    search: SearchSchema = field(default_factory=SearchSchema)
    episodes: int = 64  # evaluation games, with search and with the blueprint alone
    batch: int = 16  # games played at once (vmapped; pure-JAX games)
    iterations: int = 0  # > 0: also apply search at every decision point, iterated (small games)
    logger: LoggerConfig = field(
        default_factory=lambda: LoggerConfig(wandb=WandbConfig(job_type="search"))
    )


@dataclass
class AttackSchema:
    """One attack of ``configs/attack/`` (``marl attack attack=<name>``)."""

    name: str = "ami"
    algo: str | None = "ami"  # the attacker's algorithm (configs/algo/); null: no training
    mode: str = "adversary"  # the slot plays the adversary | random | clean (the team's own)
    algo_overrides: list[str] = field(default_factory=list)  # e.g. algo.influence.target=none


@dataclass
class AttackRunConfig:
    """Root config of ``marl attack`` (``configs/attack_run.yaml``): the attack and the
    victims; every other key is the attacker's training config (``configs/config.yaml``)."""

    attack: AttackSchema = field(default_factory=AttackSchema)
    victims: str | None = None  # run directory of the trained team
    adversary_slot: int = 0  # the agent the adversary replaces
    victim_step: int | None = None  # the victims' checkpoint (default: the last)
    victim_seed: int = 0  # which seed of a multi-seed victims' run
    victim_greedy: bool = False  # victims take their most likely action (default: sample)


_SCHEMAS: dict[str, type] = {
    "config": TrainConfig,
    "search_run": SearchRunConfig,
    "attack_run": AttackRunConfig,
}
# `marl search eta=0.5` is short for `search.eta=0.5`
SEARCH_SHORTHANDS = (
    "kind",
    "eta",
    "alpha",
    "magnet",
    "samples",
    "rollouts",
    "play",
    "rollout",
    "likelihood",
    "max_depth",
)

_CHOICES = {
    "env.kind": ("jax", "pettingzoo"),
    "env.workers": ("async", "sync"),
    "logger.wandb.mode": ("offline", "online", "disabled"),
    "algo.network.activation": ("tanh", "relu", "gelu"),
    "algo.graph.mode": ("full", "learned", "none"),
}


def config_dir() -> Path:
    """The Hydra config directory (``$MARL_CONFIG_DIR`` or the repository's ``configs/``)."""
    env = os.environ.get("MARL_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "configs"
    if not path.is_dir():
        raise ConfigError(f"config directory {path} not found (set MARL_CONFIG_DIR)")
    return path


def group_options(group: str) -> list[str]:
    """Options of a config group, e.g. ``env`` -> ``["mpe/simple_spread", ...]``."""
    root = config_dir() / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _check_groups(overrides: list[str]) -> None:
    for o in overrides:
        key, sep, value = o.partition("=")
        key = key.lstrip("+~")
        if sep and key in ("env", "algo", "preset", "search", "attack"):
            options = group_options(key)
            if value not in options:
                raise unknown(key, value, options)


def _integral(override: str, schema: type = TrainConfig) -> str:
    """``total_timesteps=1e7`` -> ``total_timesteps=10000000`` for integer keys."""
    key, sep, value = override.partition("=")
    if not sep or key.startswith(("+", "~")) or "e" not in value.lower():
        return override
    default = OmegaConf.select(OmegaConf.structured(schema), key, default=None)
    try:
        number = float(value)
    except ValueError:
        return override
    if isinstance(default, int) and not isinstance(default, bool) and number.is_integer():
        return f"{key}={int(number)}"
    return override


def _unknown_key(key: str, schema_cls: type = TrainConfig) -> Exception:
    """An unknown config key, with the valid keys at its level."""
    schema = OmegaConf.structured(schema_cls)
    parent = key.rsplit(".", 1)[0] if "." in key else None
    node = OmegaConf.select(schema, parent) if parent else schema
    if isinstance(node, DictConfig) and parent != "env.kwargs":
        return unknown("config key", key, [f"{parent}.{k}" if parent else k for k in node])
    return unknown("config key", key, [str(k) for k in schema])


def _short(err: Exception) -> str:
    msg = str(err).strip().splitlines()
    return msg[0] if msg else type(err).__name__


def _merge(cfg: DictConfig | dict, schema_cls: type) -> DictConfig:
    """``cfg`` merged into the typed schema; unknown keys and wrong types raise ConfigError."""
    schema = OmegaConf.structured(schema_cls)
    try:
        return OmegaConf.merge(schema, cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        if "not in struct" in str(err) or "Key '" in str(err) and "not" in str(err):
            raise _unknown_key(key or "?", schema_cls) from None
        raise ConfigError(f"invalid config value for {key}: {_short(err)}") from None


def validate_search(cfg: DictConfig | dict) -> DictConfig:
    """Validate a ``marl search`` config (:class:`SearchRunConfig`)."""
    from marl.agents.search import SearchConfig

    merged = _merge(cfg, SearchRunConfig)
    if merged.env.kind not in ("jax", "openspiel"):
        raise ConfigError(f"env.kind={merged.env.kind!r}: search plays jax or openspiel games")
    for k in ("episodes", "batch"):
        if merged[k] < 1:
            raise ConfigError(f"{k} must be >= 1, got {merged[k]}")
    if merged.iterations < 0:
        raise ConfigError(f"iterations must be >= 0, got {merged.iterations}")
    sc = merged.search
    # SearchConfig checks the update's values and names the bad one
    SearchConfig(sc.kind, sc.eta, sc.alpha, sc.magnet, sc.samples, sc.rollouts, sc.play, sc.rollout)
    if sc.likelihood not in ("policy", "greedy", "none"):
        raise ConfigError(
            f"search.likelihood must be policy, greedy or none, got {sc.likelihood!r}"
        )
    if sc.max_depth is not None and sc.max_depth < 1:
        raise ConfigError(f"search.max_depth must be >= 1, got {sc.max_depth}")
    return merged


def validate(cfg: DictConfig | dict) -> DictConfig:
    """Merge ``cfg`` into the typed schema; unknown keys and wrong types raise ConfigError."""
    merged = _merge(cfg, TrainConfig)
    if merged.env.kind == "openspiel":
        raise ConfigError(
            f"env {merged.env.name!r} is an OpenSpiel game for `marl search`; to train on an "
            "OpenSpiel game, load it through PettingZoo (env.kind=pettingzoo, shimmy)"
        )
    for k, choices in _CHOICES.items():
        v = OmegaConf.select(merged, k)
        if v not in choices:
            raise ConfigError(f"{k}={v!r} is not one of {', '.join(choices)}")
    positive = (
        "num_seeds",
        "total_timesteps",
        "num_envs",
        "algo.rollout_len",
        "algo.update_epochs",
        "algo.num_minibatches",
        "eval.episodes",
        "eval.num_evals",
        "algo.network.embed_dim",
        "algo.network.num_blocks",
        "algo.network.num_heads",
        "algo.graph.period",
        "algo.latent.num",
        "algo.latent.mi_samples",
        "algo.influence.samples",
        "algo.influence.epochs",
    )
    for k in positive:
        if OmegaConf.select(merged, k) < 1:
            raise ConfigError(f"{k} must be >= 1, got {OmegaConf.select(merged, k)}")
    net = merged.algo.network
    if net.embed_dim % net.num_heads:
        raise ConfigError(
            f"algo.network.embed_dim={net.embed_dim} must be a multiple of "
            f"algo.network.num_heads={net.num_heads}"
        )
    if merged.algo.latent.tau <= 0:
        raise ConfigError(f"algo.latent.tau must be > 0, got {merged.algo.latent.tau}")
    if not 0.0 < merged.algo.latent.mi_fraction <= 1.0:
        raise ConfigError(
            f"algo.latent.mi_fraction must be in (0, 1], got {merged.algo.latent.mi_fraction}"
        )
    inf = merged.algo.influence
    if inf.target not in ("oracle", "none") or inf.marginal not in ("policy", "realised"):
        raise ConfigError(
            f"algo.influence: target must be oracle or none and marginal policy or realised, "
            f"got target={inf.target!r} marginal={inf.marginal!r}"
        )
    if not 0.0 <= merged.algo.graph.sparsity <= 1.0:
        raise ConfigError(
            f"algo.graph.sparsity must be in [0, 1], got {merged.algo.graph.sparsity}"
        )
    return merged


def _compose(name: str, overrides: list[str] | None) -> DictConfig:
    """``configs/<name>.yaml`` composed with Hydra overrides (not yet validated)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    schema = _SCHEMAS[name]
    # env.kwargs is free-form (the environment validates it): add or override its keys;
    # algo.influence keys a config file leaves at the schema's default, likewise (the
    # schema still refuses unknown ones)
    overrides = [
        f"++{o}" if o.startswith(("env.kwargs.", "algo.influence.")) else o for o in overrides or []
    ]
    overrides = [_integral(o, schema) for o in overrides]
    _check_groups(overrides)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        msg = _short(err)
        m = re.search(r"Could not override '([^']+)'", msg)
        if m:
            raise _unknown_key(m.group(1), schema) from None
        raise ConfigError(msg) from None


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/config.yaml`` (``marl train``) with Hydra overrides and validate it."""
    return validate(_compose("config", overrides))


def compose_search(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/search_run.yaml`` (``marl search``) with Hydra overrides, where
    ``eta=0.5`` is short for ``search.eta=0.5``, and validate it."""
    out = []
    for o in overrides or []:
        key = o.partition("=")[0]
        out.append(f"search.{o}" if key in SEARCH_SHORTHANDS else o)
    return validate_search(_compose("search_run", out))


def compose_attack(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/attack_run.yaml`` (the attack part of ``marl attack``) and validate
    it."""
    cfg = _merge(_compose("attack_run", list(overrides or [])), AttackRunConfig)
    a = cfg.attack
    if a.mode not in ("adversary", "random", "clean"):
        raise ConfigError(f"attack.mode={a.mode!r} is not one of adversary, random, clean")
    if a.algo is not None and a.algo not in group_options("algo"):
        raise unknown("attack.algo", a.algo, group_options("algo"))
    if cfg.adversary_slot < 0 or cfg.victim_seed < 0:
        raise ConfigError("adversary_slot and victim_seed must be >= 0")
    return cfg


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A plain, resolved dict."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
