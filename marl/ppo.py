"""The shared PPO core: trajectories, GAE, value normalisation, the clipped loss and the
epoch/minibatch update. Algorithms (IPPO, MAPPO, and later MAT-style policies) reuse it
through the :class:`marl.policy.Policy` interface.

Array order everywhere: ``[time, env, agent, ...]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from marl.policy import Policy, PolicyInput, TrainContext


@dataclass
class PPOConfig:
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    update_epochs: int = 4
    num_minibatches: int = 4
    value_norm: bool = True
    huber_delta: float = 0.0  # > 0: Huber value loss with this delta (MAT's 10); 0: squared


class Transition(NamedTuple):
    """One rollout step, ``[T, E, ...]``."""

    inp: PolicyInput
    action: jax.Array  # [T, E, A] or [T, E, A, nA]
    logp: jax.Array  # [T, E, A]
    value: jax.Array  # [T, E, A] critic output (normalised when value_norm)
    reward: jax.Array  # [T, E, A]
    done: jax.Array  # [T, E] the episode ended with this step
    # the hidden state `act` returned at each step, kept for policies with `step_hidden`
    # (MRA's per-episode latent); None otherwise
    hidden: Any = None


class ValueNorm(NamedTuple):
    """Running mean / second moment of the value targets (debiased EMA, as MAPPO's)."""

    mean: jax.Array
    mean_sq: jax.Array
    debias: jax.Array

    @staticmethod
    def create() -> ValueNorm:
        z = jnp.zeros((), jnp.float32)
        return ValueNorm(z, z, z)

    def stats(self) -> tuple[jax.Array, jax.Array]:
        d = jnp.maximum(self.debias, 1e-5)
        mean = self.mean / d
        var = jnp.maximum(self.mean_sq / d - mean**2, 1e-2)
        return mean, jnp.sqrt(var)

    def update(self, x: jax.Array, mask: jax.Array, beta: float = 0.99999) -> ValueNorm:
        n = jnp.maximum(mask.sum(), 1.0)
        bm = (x * mask).sum() / n
        bsq = (x**2 * mask).sum() / n
        return ValueNorm(
            self.mean * beta + bm * (1 - beta),
            self.mean_sq * beta + bsq * (1 - beta),
            self.debias * beta + (1 - beta),
        )

    def normalize(self, x: jax.Array) -> jax.Array:
        mean, std = self.stats()
        return (x - mean) / std

    def denormalize(self, x: jax.Array) -> jax.Array:
        mean, std = self.stats()
        return x * std + mean


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    value_norm: ValueNorm
    update: Any = np.int32(0)  # PPO updates made so far (a policy's schedules read it)
    # what a policy with `prepare` learns besides its parameters (AMI's victim model and
    # oracle, their optimisers, reward statistics); None for the others
    aux: Any = None


def scan(f, init, xs):
    """``jax.lax.scan``, or one direct call when the length is 1: a length-1 scan nested in
    the training loops under ``vmap`` over seeds can hang XLA:CPU (jax 0.10.2), e.g. with a
    single minibatch, or a chunk of one update."""
    if jax.tree.leaves(xs)[0].shape[0] == 1:
        carry, y = f(init, jax.tree.map(lambda x: x[0], xs))
        return carry, jax.tree.map(lambda v: v[None], y)
    return jax.lax.scan(f, init, xs)


def gae(
    reward: jax.Array,
    value: jax.Array,
    done: jax.Array,
    last_value: jax.Array,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over ``[T, E, A]``; ``done [T, E]`` cuts the
    bootstrap after the step that ended an episode. Returns ``(advantages, targets)``."""
    not_done = 1.0 - done[..., None].astype(jnp.float32)

    def step(carry, xs):
        next_adv, next_value = carry
        r, v, nd = xs
        delta = r + gamma * next_value * nd - v
        adv = delta + gamma * lam * nd * next_adv
        return (adv, v), adv

    _, adv = jax.lax.scan(
        step, (jnp.zeros_like(last_value), last_value), (reward, value, not_done), reverse=True
    )
    return adv, adv + value


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _value_error(x: jax.Array, delta: float) -> jax.Array:
    """``0.5 x^2``, or the Huber loss of ``x`` when ``delta > 0``."""
    if delta > 0:
        return optax.losses.huber_loss(x, delta=delta)
    return 0.5 * x**2


def epoch_groups(
    groups: dict[str, optax.GradientTransformation],
    active: dict[str, Callable[[jax.Array], jax.Array]],
    labels: Callable[[Any], Any],
    steps_per_epoch: int,
) -> optax.GradientTransformation:
    """Parameter groups that train in different PPO epochs (CommFormer's bi-level schedule).

    ``groups`` maps a label to its optimiser, ``labels(params)`` labels the parameters (as
    :func:`optax.multi_transform`), and ``active[label](epoch)`` says whether the group steps
    in PPO epoch ``epoch``, counted from 0 over the whole run (``steps_per_epoch`` optimiser
    steps, the minibatches, make one epoch). A group without an entry always steps. In the
    other epochs the group's update is zero and its optimiser state (moments, counts) does
    not move.
    """

    def gate(tx, fn):
        return optax.transforms.conditionally_mask(tx, lambda step: fn(step // steps_per_epoch))

    txs = {k: gate(tx, active[k]) if k in active else tx for k, tx in groups.items()}
    return optax.multi_transform(txs, labels)


def ppo_loss(
    policy: Policy,
    cfg: PPOConfig,
    params: Any,
    hidden: Any,
    batch: Transition,
    adv: jax.Array,
    target: jax.Array,
    old_value: jax.Array,
    ctx: TrainContext | None = None,
):
    """Clipped policy loss, clipped value loss and entropy bonus, averaged over the agents
    present (``alive``), plus the policy's auxiliary loss if it returns one. ``target`` and
    ``old_value`` are in the critic's (normalised) units."""
    mask = batch.inp.alive.astype(jnp.float32)
    if batch.hidden is not None:  # a `step_hidden` policy: every step's own hidden state
        hidden = batch.hidden
    out = policy.evaluate(params, hidden, batch.inp, batch.action, ctx)
    logp, entropy, value = out[:3]
    extras = dict(out[3]) if len(out) > 3 else {}
    ratio = jnp.exp(logp - batch.logp)
    adv_mean = _masked_mean(adv, mask)
    adv_std = jnp.sqrt(_masked_mean((adv - adv_mean) ** 2, mask))
    adv = (adv - adv_mean) / (adv_std + 1e-8)
    actor = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
    actor_loss = _masked_mean(actor, mask)
    v_clipped = old_value + jnp.clip(value - old_value, -cfg.value_clip_eps, cfg.value_clip_eps)
    value_loss = _masked_mean(
        jnp.maximum(
            _value_error(value - target, cfg.huber_delta),
            _value_error(v_clipped - target, cfg.huber_delta),
        ),
        mask,
    )
    ent = _masked_mean(entropy, mask)
    aux = extras.pop("aux_loss", jnp.zeros(()))
    total = actor_loss + cfg.vf_coef * value_loss - cfg.ent_coef * ent + aux
    approx_kl = _masked_mean((ratio - 1) - (logp - batch.logp), mask)
    clip_frac = _masked_mean((jnp.abs(ratio - 1) > cfg.clip_eps).astype(jnp.float32), mask)
    return total, {
        "loss/actor": actor_loss,
        "loss/critic": value_loss,
        "loss/entropy": ent,
        "loss/approx_kl": approx_kl,
        "loss/clip_frac": clip_frac,
        "loss/total": total,
        "loss/aux": aux,
        **extras,
    }


def ppo_update(
    policy: Policy,
    cfg: PPOConfig,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    traj: Transition,
    hidden0: Any,
    last_inp: PolicyInput,
    last_hidden: Any,
    key: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Epochs of minibatch PPO on one rollout ``traj [T, E, ...]``.

    ``hidden0`` is the recurrent state at the rollout's start (recurrent policies replay whole
    sequences, so minibatches split environment copies); feed-forward policies shuffle
    individual steps. A policy with ``step_hidden = True`` (a latent drawn once per episode)
    gets each step's own hidden state, ``traj.hidden``, in :meth:`Policy.evaluate`.

    A policy with ``prepare(params, aux, traj, last_inp, key) -> (aux, reward, metrics)``
    first trains what it keeps in ``state.aux`` on the rollout and replaces its rewards
    (AMI: the victim model and the oracle learn, then the influence term shapes the reward);
    the PPO epochs below then run on the new rewards.
    """
    aux, prep_metrics = state.aux, {}
    prepare = getattr(policy, "prepare", None)
    if prepare is not None:
        key, k_prep = jax.random.split(key)
        aux, reward, prep_metrics = prepare(state.params, state.aux, traj, last_inp, k_prep)
        traj = traj._replace(reward=reward)
    # Bootstrap value of the observation after the last step.
    ctx = TrainContext(key, jnp.asarray(state.update, jnp.int32))
    _, _, _, last_value = policy.act(state.params, last_hidden, last_inp, key, True, ctx)
    vn = state.value_norm
    denorm = vn.denormalize if cfg.value_norm else (lambda x: x)
    values = denorm(traj.value)
    adv, targets = gae(
        traj.reward, values, traj.done, denorm(last_value[0]), cfg.gamma, cfg.gae_lambda
    )
    if cfg.value_norm:
        vn = vn.update(targets, traj.inp.alive.astype(jnp.float32))
        targets_n = vn.normalize(targets)
        old_value = vn.normalize(values)
    else:
        targets_n, old_value = targets, traj.value

    T, E = traj.reward.shape[:2]
    recurrent = getattr(policy, "recurrent", False)
    nm = cfg.num_minibatches
    data = (traj, adv, targets_n, old_value)

    def epoch(carry, k):
        params, opt_state = carry
        # one sample of the policy's own randomness per minibatch (the shuffle keeps `k`)
        ctx_keys = jax.random.split(jax.random.fold_in(k, 1), nm)
        if recurrent:
            perm = jax.random.permutation(k, E)
            # [T, E, ...] -> [nm, T, E/nm, ...]
            shuf = jax.tree.map(lambda x: jnp.take(x, perm, axis=1), data)
            mbs = jax.tree.map(
                lambda x: jnp.swapaxes(x.reshape(T, nm, E // nm, *x.shape[2:]), 0, 1), shuf
            )
            h = jax.tree.map(
                lambda x: jnp.take(x, perm, axis=0).reshape(nm, E // nm, *x.shape[1:]), hidden0
            )
        else:
            # steps are independent: [T, E, ...] -> [T*E] shuffled -> [nm, 1, T*E/nm, ...]
            perm = jax.random.permutation(k, T * E)
            flat = jax.tree.map(lambda x: x.reshape(T * E, *x.shape[2:])[perm], data)
            mbs = jax.tree.map(lambda x: x.reshape(nm, 1, (T * E) // nm, *x.shape[1:]), flat)
            h = jax.tree.map(
                lambda x: jnp.zeros((nm, (T * E) // nm, *x.shape[1:]), x.dtype), hidden0
            )

        def minibatch(carry, mb):
            params, opt_state = carry
            (batch, a, tg, ov), hid, k_mb = mb
            ctx = TrainContext(k_mb, jnp.asarray(state.update, jnp.int32))
            grads, metrics = jax.grad(
                lambda p: ppo_loss(policy, cfg, p, hid, batch, a, tg, ov, ctx), has_aux=True
            )(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            metrics["loss/grad_norm"] = optax.tree.norm(grads)
            return (params, opt_state), metrics

        return scan(minibatch, (params, opt_state), (mbs, h, ctx_keys))

    (params, opt_state), metrics = scan(
        epoch, (state.params, state.opt_state), jax.random.split(key, cfg.update_epochs)
    )
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["value/mean_target"] = _masked_mean(targets, traj.inp.alive.astype(jnp.float32))
    metrics.update(prep_metrics)
    return TrainState(params, opt_state, vn, state.update + 1, aux), metrics
