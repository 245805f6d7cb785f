"""Networks and algorithms. :func:`make_policy` builds the policy an algorithm config names."""

from __future__ import annotations

from typing import Any

from marl.envs.core import EnvSpec
from marl.errors import unknown

# Algorithms built on the actor-critic PPO policy; MAT, CommFormer, MRA and AMI add theirs.
ACTOR_CRITIC = ("ippo", "mappo", "ippo_rnn", "mappo_rnn")


def make_policy(algo: Any, spec: EnvSpec, total_updates: int):
    """The policy of algorithm config ``algo`` (an ``AlgoConfig``) for environment ``spec``."""
    from marl.agents.actor_critic import ActorCriticPolicy, NetworkConfig

    if algo.name not in ACTOR_CRITIC:
        raise unknown("algorithm", algo.name, ACTOR_CRITIC)
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
