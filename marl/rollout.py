"""Rollouts and evaluation on both environment kinds, feeding one PPO update.

Pure-JAX environments: :func:`make_jax_update` fuses rollout (``lax.scan``) and update into
one function that ``jit`` compiles and ``vmap`` maps over seeds. PettingZoo environments:
:class:`HostRollout` steps the vectorized bridge on the host with the same jitted policy and
the same update (:func:`make_update`).

Per-update metrics leave the compiled program as sums and counts of finished episodes
(``episodes``, ``return_sum`` of the mean-over-agents return, ``length_sum``, ``won_sum``) so
the host can average them without a per-step transfer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from marl.envs.core import TimeStep
from marl.errors import MarlError
from marl.policy import Policy, PolicyInput, TrainContext
from marl.ppo import PPOConfig, TrainState, Transition, ppo_update


class Runner(NamedTuple):
    """Everything one seed's training carries from update to update."""

    train: TrainState
    env_state: Any  # None on the host path (the state lives in worker processes)
    ts: TimeStep  # last step, [E, ...]
    hidden: Any
    first: jax.Array  # [E] the next observation starts an episode
    key: jax.Array


def step_input(ts: TimeStep, first: Any) -> PolicyInput:
    """The policy's input of one step, no time axis, from a time step (jax or numpy)."""
    return PolicyInput(ts.obs, ts.state, ts.avail_actions, first, ts.alive)


def policy_input(ts: TimeStep, first: jax.Array) -> PolicyInput:
    """A one-step ``[1, E, ...]`` policy input from a ``[E, ...]`` time step."""
    return jax.tree.map(lambda x: x[None], step_input(ts, first))


def episode_sums(ts: TimeStep, has_win: bool, axis=None) -> dict[str, Any]:
    """Sums over the finished episodes of a batch of time steps (jax or numpy arrays), over
    ``axis`` (default: all)."""
    d = ts.episode_done.astype(np.float32)
    out = {
        "episodes": d.sum(axis),
        "return_sum": (ts.episode_return.mean(-1) * d).sum(axis),
        "length_sum": (ts.episode_length * d).sum(axis),
    }
    if has_win:
        out["won_sum"] = (ts.episode_won * d).sum(axis)
    return out


def game_sums(ts: TimeStep, game_ids: np.ndarray, names: tuple[str, ...], has_win: bool):
    """:func:`episode_sums` per game of a population environment (``game_ids [E]``, copies on
    the last axis of ``ts.episode_done [..., E]``), keyed ``game/<name>/<sum>``."""
    out = {}
    for g, name in enumerate(names):
        m = jnp.asarray(game_ids == g, jnp.float32)
        sub = ts._replace(episode_done=ts.episode_done * m)
        for k, v in episode_sums(sub, has_win).items():
            out[f"game/{name}/{k}"] = v
    return out


def make_update(policy: Policy, cfg: PPOConfig, optimizer):
    """``update(train, traj, hidden0, last_inp, last_hidden, key) -> (train, metrics)``."""

    def update(train: TrainState, traj: Transition, hidden0, last_inp, last_hidden, key):
        return ppo_update(policy, cfg, optimizer, train, traj, hidden0, last_inp, last_hidden, key)

    return update


def make_jax_update(env, policy: Policy, cfg: PPOConfig, optimizer, rollout_len: int):
    """One training update of one seed on a pure-JAX environment: ``Runner -> (Runner,
    metrics)``; scan it for several updates, vmap it over seeds."""
    update = make_update(policy, cfg, optimizer)
    has_win = env.spec.has_win
    step_hidden = getattr(policy, "step_hidden", False)
    games = env.spec.games

    def step(carry, key):
        params, n_update, env_state, ts, hidden, first = carry
        k_act, k_env = jax.random.split(key)
        inp = policy_input(ts, first)
        ctx = TrainContext(k_act, n_update)
        hidden, action, logp, value = policy.act(params, hidden, inp, k_act, False, ctx)
        env_state, ts_next = env.step_batch(k_env, env_state, action[0])
        tr = Transition(
            jax.tree.map(lambda x: x[0], inp),
            action[0],
            logp[0],
            value[0],
            ts_next.reward,
            ts_next.episode_done,
            hidden if step_hidden else None,
        )
        stats = episode_sums(ts_next, has_win)
        if games:
            ids = env.game_ids(ts_next.episode_done.shape[0])
            stats.update(game_sums(ts_next, ids, games, has_win))
        return (params, n_update, env_state, ts_next, hidden, ts_next.episode_done), (tr, stats)

    def run(runner: Runner) -> tuple[Runner, dict[str, jax.Array]]:
        key, k_roll, k_upd = jax.random.split(runner.key, 3)
        n_update = jnp.asarray(runner.train.update, jnp.int32)
        carry = (
            runner.train.params,
            n_update,
            runner.env_state,
            runner.ts,
            runner.hidden,
            runner.first,
        )
        (_, _, env_state, ts, hidden, first), (traj, stats) = jax.lax.scan(
            step, carry, jax.random.split(k_roll, rollout_len)
        )
        train, metrics = update(
            runner.train, traj, runner.hidden, policy_input(ts, first), hidden, k_upd
        )
        metrics.update(jax.tree.map(jnp.sum, stats))
        return Runner(train, env_state, ts, hidden, first, key), metrics

    return run


def make_jax_eval(
    env,
    policy: Policy,
    num_episodes: int,
    max_steps: int,
    greedy: bool,
    with_hidden: bool = False,
):
    """``evaluate(params, key) -> (returns [N], lengths [N], won [N], finished [N])`` over
    the first episode of ``num_episodes`` parallel copies (mean-over-agents undiscounted
    return); ``with_hidden`` adds the hidden state after the first step (a latent the policy
    drew for the episode, as MRA's adaptation needs)."""
    steps = env.spec.max_steps or max_steps

    def evaluate(params, key):
        k_reset, k_run = jax.random.split(key)
        env_state, ts = env.reset_batch(k_reset, num_episodes)
        hidden = policy.initial_hidden(num_episodes)
        first = jnp.ones((num_episodes,), bool)
        zeros = jnp.zeros((num_episodes,))
        init = (env_state, ts, hidden, first, jnp.zeros((num_episodes,), bool), zeros, zeros, zeros)

        def step(carry, k):
            env_state, ts, hidden, first, finished, ret, length, won = carry
            k_act, k_env = jax.random.split(k)
            hidden, action, _, _ = policy.act(
                params, hidden, policy_input(ts, first), k_act, greedy=greedy
            )
            env_state, ts = env.step_batch(k_env, env_state, action[0])
            new = ts.episode_done & ~finished
            ret = jnp.where(new, ts.episode_return.mean(-1), ret)
            length = jnp.where(new, ts.episode_length, length)
            won = jnp.where(new, ts.episode_won, won)
            return (
                env_state,
                ts,
                hidden,
                ts.episode_done,
                finished | ts.episode_done,
                ret,
                length,
                won,
            ), None

        keys = jax.random.split(k_run, steps)
        if with_hidden:
            carry, _ = step(init, keys[0])
            hidden0 = carry[2]
            (_, _, _, _, finished, ret, length, won), _ = jax.lax.scan(step, carry, keys[1:])
            return ret, length, won, finished, hidden0
        (_, _, _, _, finished, ret, length, won), _ = jax.lax.scan(step, init, keys)
        return ret, length, won, finished

    return evaluate


class HostRollout:
    """Rollouts through a vectorized PettingZoo environment for ``S`` seeds at once: copies
    ``[S * E]`` on the host, arrays ``[S, E, ...]`` for the jitted policy and update."""

    def __init__(self, venv, policy: Policy, num_seeds: int, num_envs: int):
        self.venv, self.policy = venv, policy
        self.S, self.E = num_seeds, num_envs
        self._step_hidden = getattr(policy, "step_hidden", False)

        def act(params, hidden, inp: PolicyInput, key, greedy: bool, update=None):
            # acting and dropping the time axis in one compiled call: the host loop pays one
            # dispatch per step (with only the policy's inputs to transfer), not one per
            # small array operation
            inp = jax.tree.map(lambda x: x[None], inp)
            ctx = None if update is None else TrainContext(key, update)
            h, a, lp, v = policy.act(params, hidden, inp, key, greedy, ctx)
            return h, a[0], lp[0], v[0]

        self._act = jax.jit(jax.vmap(lambda p, h, i, k: act(p, h, i, k, False)))
        self._act_train = jax.jit(jax.vmap(lambda p, h, i, k, u: act(p, h, i, k, False, u)))
        self._act_greedy = jax.jit(jax.vmap(lambda p, h, i, k: act(p, h, i, k, True)))

    def split(self, ts: TimeStep) -> TimeStep:
        """``[S * E, ...]`` -> ``[S, E, ...]``."""
        return jax.tree.map(lambda x: np.asarray(x).reshape(self.S, self.E, *x.shape[1:]), ts)

    def reset(self, seed: int) -> TimeStep:
        return self.split(self.venv.reset(seed=seed))

    def rollout(self, params, ts: TimeStep, hidden, first, key, steps: int, update):
        """``steps`` steps of the rollout feeding update ``update [S]``; returns the last
        ``(ts, hidden, first)``, the ``[S, T, E, ...]`` trajectory and the per-seed episode
        sums."""
        trs, sums = [], []
        keys = np.asarray(jax.random.split(key, steps * self.S)).reshape(steps, self.S, -1)
        first = np.asarray(first)
        for t in range(steps):
            inp = step_input(ts, first)
            hidden, action, logp, value = self._act_train(params, hidden, inp, keys[t], update)
            action, logp, value = jax.device_get((action, logp, value))
            nxt = self.split(self.venv.step(action.reshape(self.S * self.E, *action.shape[2:])))
            h = jax.device_get(hidden) if self._step_hidden else None
            trs.append(Transition(inp, action, logp, value, nxt.reward, nxt.episode_done, h))
            sums.append(nxt)
            ts, first = nxt, nxt.episode_done
        traj = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *trs)  # [S, T, E, ...]
        steps_ts = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *sums)
        return ts, hidden, jnp.asarray(first), traj, steps_ts

    def evaluate(self, params, key, num_episodes: int, greedy: bool, max_steps: int):
        """Per-seed first-episode statistics of ``num_episodes`` episodes (``E`` copies in
        rounds): arrays ``[S, num_episodes]``."""
        rets = [[] for _ in range(self.S)]
        lens = [[] for _ in range(self.S)]
        wins = [[] for _ in range(self.S)]
        act = self._act_greedy if greedy else self._act
        round_ = 0
        while min(len(r) for r in rets) < num_episodes:
            ts = self.reset(
                seed=int(jax.random.randint(jax.random.fold_in(key, round_), (), 0, 2**30))
            )
            hidden = jax.vmap(lambda _: self.policy.initial_hidden(self.E))(jnp.arange(self.S))
            first = np.ones((self.S, self.E), bool)
            finished = np.zeros((self.S, self.E), bool)
            keys = jax.random.split(jax.random.fold_in(key, round_), max_steps * self.S)
            keys = np.asarray(keys).reshape(max_steps, self.S, -1)
            for t in range(max_steps):
                hidden, action, _, _ = act(params, hidden, step_input(ts, first), keys[t])
                a = np.asarray(action)
                ts = self.split(self.venv.step(a.reshape(self.S * self.E, *a.shape[2:])))
                new = ts.episode_done & ~finished
                for s, e in zip(*np.nonzero(new), strict=True):
                    rets[s].append(float(ts.episode_return[s, e].mean()))
                    lens[s].append(float(ts.episode_length[s, e]))
                    wins[s].append(float(ts.episode_won[s, e]))
                finished |= ts.episode_done
                first = ts.episode_done
                if finished.all():
                    break
            round_ += 1
            if not finished.any():
                raise MarlError(
                    f"no evaluation episode ended within {max_steps} steps; raise eval.max_steps"
                )
        cut = [np.asarray(x[s][:num_episodes]) for x in (rets, lens, wins) for s in range(self.S)]
        S = self.S
        return (np.stack(cut[:S]), np.stack(cut[S : 2 * S]), np.stack(cut[2 * S :]))
