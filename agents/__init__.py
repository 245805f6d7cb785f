"""Networks and algorithms. :func:`make_policy` builds the policy an algorithm config names."""

from __future__ import annotations

from typing import Any

from marl.envs.core import EnvSpec
from marl.errors import unknown

# Algorithms built on the actor-critic PPO policy; AMI adds its own.
ACTOR_CRITIC = ("ippo", "mappo", "ippo_rnn", "mappo_rnn")
TRANSFORMER = ("mat", "commformer")  # marl.agents.mat.MATPolicy, graph from algo.graph
ALGORITHMS = ACTOR_CRITIC + TRANSFORMER + ("mra", "ami")


def make_policy(algo: Any, spec: EnvSpec, total_updates: int):
    """The policy of algorithm config ``algo`` (an ``AlgoConfig``) for environment ``spec``."""
    if algo.name not in ALGORITHMS:
        raise unknown("algorithm", algo.name, ALGORITHMS)
    if algo.name in TRANSFORMER:
        return _transformer(algo, spec, total_updates)
    if algo.name == "mra":
        return _mra(algo, spec, total_updates)
    if algo.name == "ami":
        return _ami(algo, spec, total_updates)
    return _actor_critic(algo, spec, total_updates)


def _actor_critic(algo: Any, spec: EnvSpec, total_updates: int):
    from marl.agents.actor_critic import ActorCriticPolicy, NetworkConfig

    net = algo.network
    return ActorCriticPolicy(
        spec,
        centralised=bool(algo.centralised_critic),
        network=NetworkConfig(
            tuple(net.hidden), net.activation, bool(net.recurrent), int(net.gru_features)
        ),
        share_params=bool(algo.share_params),
        lr=float(algo.lr),
        critic_lr=None if algo.critic_lr is None else float(algo.critic_lr),
        max_grad_norm=float(algo.max_grad_norm),
        anneal_lr=bool(algo.anneal_lr),
        total_updates=total_updates,
        updates_per_step=int(algo.update_epochs) * int(algo.num_minibatches),
    )


def _transformer(algo: Any, spec: EnvSpec, total_updates: int):
    from marl.agents.mat import GateConfig, GraphConfig, MATPolicy

    net, g = algo.network, algo.graph
    return MATPolicy(
        spec,
        dim=int(net.embed_dim),
        heads=int(net.num_heads),
        blocks=int(net.num_blocks),
        share_heads=bool(algo.share_params),
        graph=GraphConfig(
            str(g.mode),
            float(g.sparsity),
            float(g.lr),
            int(g.period),
            int(g.warmup),
            float(g.freeze),
            float(g.temperature),
        ),
        gating=GateConfig(bool(algo.gating), float(algo.gate_penalty), float(algo.gate_threshold)),
        lr=float(algo.lr),
        max_grad_norm=float(algo.max_grad_norm),
        anneal_lr=bool(algo.anneal_lr),
        total_updates=total_updates,
        update_epochs=int(algo.update_epochs),
        num_minibatches=int(algo.num_minibatches),
    )


def _mra(algo: Any, spec: EnvSpec, total_updates: int):
    from marl.agents.mra import LatentConfig, MRAPolicy

    net, lat = algo.network, algo.latent
    return MRAPolicy(
        spec,
        latent=LatentConfig(
            int(lat.num),
            float(lat.tau),
            float(lat.mi_coef),
            int(lat.mi_samples),
            float(lat.classifier_coef),
            float(lat.mi_fraction),
        ),
        dim=int(net.embed_dim),
        hidden=tuple(net.hidden),
        activation=str(net.activation),
        lr=float(algo.lr),
        max_grad_norm=float(algo.max_grad_norm),
        anneal_lr=bool(algo.anneal_lr),
        total_updates=total_updates,
        updates_per_step=int(algo.update_epochs) * int(algo.num_minibatches),
    )


def _ami(algo: Any, spec: EnvSpec, total_updates: int):
    from marl.agents.ami import AMIPolicy, InfluenceConfig
    from marl.trainer import ppo_config

    inf = algo.influence
    return AMIPolicy(
        _actor_critic(algo, spec, total_updates),
        InfluenceConfig(
            None if inf.coef is None else float(inf.coef),
            int(inf.samples),
            str(inf.target),
            str(inf.marginal),
            tuple(int(h) for h in inf.hidden),
            float(inf.lr),
            int(inf.epochs),
            float(inf.max_grad_norm),
            bool(inf.standardise),
            bool(inf.standardise_mean),
        ),
        ppo_config(algo),
    )
