"""Decision-time planning by update equivalence: MD search and MMD search.

Sokota et al., "The Update-Equivalence Framework for Decision-Time Planning" (ICLR 2024). At
the acting player's decision point the planner (1) samples hidden histories from a belief
consistent with what the player knows, (2) estimates an action value for every legal action by
blueprint rollouts from each sample (the same samples and rollout randomness for every action:
common random numbers), and (3) returns the policy that one step of a learning algorithm would
produce there from the blueprint:

- MD (common-payoff games): ``pi'(a) ∝ pi_b(a) exp(eta q(a))``;
- MMD (two-player zero-sum), magnet ``rho``, temperature ``alpha``:
  ``log pi'(a) = (log pi_b(a) + eta alpha log rho(a) + eta q(a)) / (1 + eta alpha) + c``.

This module holds the update (:func:`mmd_log_policy`, on NumPy or JAX arrays), its settings
(:class:`SearchConfig`) and the pure-JAX searcher (:class:`JaxSearch`): environment states are
pytrees, so cloning is free and the ``samples x actions x rollouts`` rollouts run vmapped in one
jitted program. :mod:`marl.agents.search_openspiel` searches OpenSpiel games with exact beliefs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from marl.errors import ConfigError

_NEG = -1e30


@dataclass(frozen=True)
class SearchConfig:
    """Settings of MD / MMD search.

    Attributes:
        kind: ``md`` (cooperative) or ``mmd`` (adversarial, with ``alpha`` and ``magnet``).
        eta: step size of the update.
        alpha: MMD temperature (regularisation towards the magnet); ignored by ``md``.
        magnet: ``uniform`` over legal actions or ``blueprint`` (``rho = pi_b``).
        samples: hidden histories sampled from the belief (0: the exact belief, enumerated,
            where the game allows it).
        rollouts: blueprint rollouts per (sample, action) (0: exact expectation by tree
            traversal, where the game allows it).
        play: ``argmax`` of the searched policy (as the paper in Hanabi) or ``sample``.
        rollout: how the blueprint acts in rollouts: ``sample`` from ``pi_b`` (the update's
            action values) or its ``argmax`` (the values of the greedy blueprint, the policy
            a greedy partner really plays; pure-JAX searcher only).
    """

    kind: str = "md"
    eta: float = 1.0
    alpha: float = 0.0
    magnet: str = "uniform"
    samples: int = 16
    rollouts: int = 1
    play: str = "argmax"
    rollout: str = "sample"

    def __post_init__(self) -> None:
        if self.kind not in ("md", "mmd"):
            raise ConfigError(f"search kind must be md or mmd, got {self.kind!r}")
        if self.magnet not in ("uniform", "blueprint"):
            raise ConfigError(f"search magnet must be uniform or blueprint, got {self.magnet!r}")
        if self.play not in ("argmax", "sample"):
            raise ConfigError(f"search play must be argmax or sample, got {self.play!r}")
        if self.rollout not in ("argmax", "sample"):
            raise ConfigError(f"search rollout must be argmax or sample, got {self.rollout!r}")
        if not self.eta > 0:
            raise ConfigError(f"search eta must be > 0, got {self.eta}")
        if self.alpha < 0:
            raise ConfigError(f"search alpha must be >= 0, got {self.alpha}")
        if self.samples < 0 or self.rollouts < 0:
            raise ConfigError("search samples and rollouts must be >= 0")

    @property
    def temperature(self) -> float:
        """The MMD temperature in effect (MD is MMD with ``alpha = 0``)."""
        return self.alpha if self.kind == "mmd" else 0.0


def mmd_log_policy(
    log_pi: Any,
    q: Any,
    legal: Any,
    eta: float,
    alpha: float = 0.0,
    log_magnet: Any | None = None,
    xp: Any = np,
) -> Any:
    """One behavioural-form MMD update at a decision point; ``alpha = 0`` is the MD update.

    ``log pi'(a) = (log pi(a) + eta alpha log rho(a) + eta q(a)) / (1 + eta alpha)``,
    normalised over the legal actions; illegal actions get probability 0 (log ``-1e30``).

    Args:
        log_pi: ``[..., nA]`` log-probabilities of the blueprint (values at illegal actions
            are ignored).
        q: ``[..., nA]`` action values of the acting player.
        legal: ``[..., nA]`` bool.
        eta, alpha: step size and temperature.
        log_magnet: ``[..., nA]`` log of the magnet; ``None`` is uniform over legal actions.
        xp: ``numpy`` (float64, exact checks) or ``jax.numpy`` (inside ``jit``).
    Returns:
        ``[..., nA]`` log-probabilities of the searched policy.
    """
    legal = xp.asarray(legal, bool)
    # log 0 = -inf would give 0 * -inf = nan below: a legal action of probability 0 stays at
    # (almost) 0 with a finite floor
    log_pi = xp.where(legal, xp.maximum(log_pi, _NEG), 0.0)
    q = xp.where(legal, q, 0.0)
    if log_magnet is None:
        n = xp.maximum(legal.sum(-1, keepdims=True), 1)
        log_magnet = -xp.log(n * xp.ones_like(log_pi))
    log_magnet = xp.where(legal, xp.maximum(log_magnet, _NEG), 0.0)
    z = (log_pi + eta * alpha * log_magnet + eta * q) / (1.0 + eta * alpha)
    z = xp.where(legal, z, _NEG)
    z = z - z.max(-1, keepdims=True)
    logz = xp.log(xp.where(legal, xp.exp(z), 0.0).sum(-1, keepdims=True))
    return xp.where(legal, z - logz, _NEG)


def masked_log_softmax(logits: jax.Array, legal: jax.Array) -> jax.Array:
    """Log-probabilities over the legal actions (``-1e30`` elsewhere)."""
    z = jnp.where(legal, logits, _NEG)
    return jnp.where(legal, jax.nn.log_softmax(z, -1), _NEG)


# ------------------------------------------------------------------------------------------
# Blueprints for the pure-JAX searcher
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blueprint:
    """A feed-forward joint policy the searcher rolls out: ``log_probs(params, obs [..., A, D],
    avail [..., A, nA], state [..., S]) -> [..., A, nA]`` log-probabilities (``-1e30`` at
    illegal actions). ``params`` (network weights, a table) is an argument of the jitted
    search, so a new blueprint of the same shapes does not trace it again. Build one with
    :func:`uniform_blueprint`, :func:`policy_blueprint` or :func:`tabular_blueprint`."""

    log_probs: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
    params: Any = None
    name: str = "blueprint"

    def sample(self, params: Any, key: jax.Array, obs, avail, state) -> jax.Array:
        """Sampled actions ``[..., A]``."""
        lp = self.log_probs(params, obs, avail, state)
        return jax.random.categorical(key, lp).astype(jnp.int32)


def uniform_blueprint() -> Blueprint:
    """Uniform over legal actions."""

    def log_probs(params, obs, avail, state):
        return masked_log_softmax(jnp.zeros(avail.shape, jnp.float32), avail)

    return Blueprint(log_probs, None, "uniform")


def policy_blueprint(policy: Any, params: Any, name: str = "blueprint") -> Blueprint:
    """The action distribution of a trained feed-forward :class:`marl.policy.Policy`.

    The distribution is read through ``Policy.evaluate`` (the log-probability of every action
    in turn, the waiting agents on their one legal move), so any policy of the platform works
    without a new method; recurrent policies are refused: their hidden state depends on the
    history a sample would have to replay.
    """
    from marl.policy import PolicyInput

    if getattr(policy, "recurrent", False):
        raise ConfigError("search needs a feed-forward blueprint (the run's policy is recurrent)")
    nA = policy.spec.num_actions

    def log_probs(params, obs, avail, state):
        lead = obs.shape[:-2]
        A = obs.shape[-2]
        flat = int(np.prod(lead)) if lead else 1
        inp = PolicyInput(
            obs=obs.reshape(1, flat, A, obs.shape[-1]),
            state=state.reshape(1, flat, state.shape[-1]),
            avail_actions=avail.reshape(1, flat, A, nA),
            first=jnp.ones((1, flat), bool),
            alive=jnp.ones((1, flat, A), bool),
        )
        hidden = policy.initial_hidden(flat)

        legal = inp.avail_actions.astype(bool)
        waiting = jnp.argmax(legal, -1).astype(jnp.int32)

        def logp_of(a):
            # the joint action "the acting agent plays a, the others their one legal move":
            # an autoregressive policy (MAT) conditions on the others' real actions
            acts = jnp.where(legal[..., a], a, waiting)
            return policy.evaluate(params, hidden, inp, acts)[0]  # [1, flat, A]

        lp = jax.vmap(logp_of)(jnp.arange(nA))  # [nA, 1, flat, A]
        lp = jnp.moveaxis(lp[:, 0], 0, -1).reshape(*lead, A, nA)
        return masked_log_softmax(lp, avail)

    return Blueprint(log_probs, params, name)


def tabular_blueprint(index_fn: Callable[[jax.Array], jax.Array], table: jax.Array) -> Blueprint:
    """A tabular policy: ``index_fn(obs [D]) -> int`` names the information state of one agent's
    observation and ``table [num_infostates, nA]`` holds its log-probabilities."""

    def log_probs(table, obs, avail, state):
        idx = jnp.vectorize(index_fn, signature="(d)->()")(obs)
        return masked_log_softmax(table[idx], avail)

    return Blueprint(log_probs, jnp.asarray(table), "tabular")


# ------------------------------------------------------------------------------------------
# The pure-JAX searcher
# ------------------------------------------------------------------------------------------


def acting_player(avail: jax.Array) -> jax.Array:
    """The acting player of a turn-based step: the agent with the most legal actions (the
    others can only wait, JaxMARL's convention of a single legal no-op)."""
    return jnp.argmax(avail.sum(-1))


class JaxSearch:
    """MD / MMD search over a pure-JAX, turn-based environment (the array view).

    A belief is a batch of environment states (``particles``, a pytree with a leading ``[K]``
    axis) with weights ``[K]``: exact beliefs enumerate the hidden histories, sampled ones hold
    equal weights. From every particle and every legal action of the acting player the blueprint
    plays to the end of the episode (at most ``max_depth`` steps); ``rollouts`` random streams
    are shared by all actions (common random numbers). Everything runs in one jitted program
    vmapped over ``particles x actions x rollouts``. With ``rollouts=0`` the value is the exact
    expectation over the blueprint's actions, every action sequence enumerated (``nA ** depth``
    paths: for tiny games with deterministic steps after the deal, such as tiny Hanabi).

    Args:
        env: a :class:`marl.envs.jax_env.JaxArrayEnv` whose rewards are common (cooperative) or
            zero-sum from the acting player's point of view (its own reward is the value).
        blueprint: the policy of every player in the rollouts (its ``params`` are an argument
            of the jitted calls).
        config: the update and the rollout counts.
        max_depth: steps per rollout (default: the environment's episode limit).
    """

    def __init__(self, env: Any, blueprint: Blueprint, config: SearchConfig, max_depth=None):
        self.env = env
        self.blueprint = blueprint
        self.config = config
        depth = max_depth or env.spec.max_steps
        if not depth:
            raise ConfigError("search needs max_depth for an environment without a time limit")
        self.max_depth = int(depth)
        if env.spec.action_type != "discrete":
            raise ConfigError("search needs discrete actions")
        self.q_values = jax.jit(self._q_values)
        self.decide = jax.jit(self._decide)

    # --------------------------------------------------------------- rollouts
    def _first_step(self, key, env_state, player, action):
        """Step ``env_state`` with ``player`` playing ``action`` (the others wait)."""
        from marl.envs.jax_env import ArrayEnvState

        env = self.env
        A = env.spec.num_agents
        avail = env._avail(env_state)  # noqa: SLF001 - the array view's legal actions
        waiting = jnp.argmax(avail, -1).astype(jnp.int32)  # the one legal move of the others
        actions = jnp.where(jnp.arange(A) == player, action, waiting)
        state = ArrayEnvState(env_state, jnp.zeros((A,), jnp.float32), jnp.array(0, jnp.int32))
        return env.step(key, state, actions)

    def _rollout(self, bp_params, key, env_state, player, action):
        """Return of ``player`` after it plays ``action`` in ``env_state``, blueprint after."""
        env = self.env
        key, k = jax.random.split(key)
        state, ts = self._first_step(k, env_state, player, action)

        def cond(c):
            _, _, ts, _, t = c
            return (~ts.episode_done) & (t < self.max_depth)

        def body(c):
            key, state, ts, ret, t = c
            key, k_a, k_s = jax.random.split(key, 3)
            if self.config.rollout == "argmax":
                lp = self.blueprint.log_probs(bp_params, ts.obs, ts.avail_actions, ts.state)
                acts = jnp.argmax(lp, -1).astype(jnp.int32)
            else:
                acts = self.blueprint.sample(bp_params, k_a, ts.obs, ts.avail_actions, ts.state)
            state, ts = env.step(k_s, state, acts)
            return key, state, ts, ret + ts.reward[player], t + 1

        init = (key, state, ts, ts.reward[player], jnp.array(1))
        return jax.lax.while_loop(cond, body, init)[3]

    def _expected(self, bp_params, key, state, ts, player, depth: int):
        """Exact expected return of ``player`` from ``(state, ts)`` under the blueprint, every
        action of the acting player enumerated for ``depth`` more steps."""
        if depth == 0:
            return jnp.zeros(())
        env = self.env
        A, nA = env.spec.num_agents, env.spec.num_actions
        lp = self.blueprint.log_probs(bp_params, ts.obs, ts.avail_actions, ts.state)
        actor = acting_player(ts.avail_actions)
        waiting = jnp.argmax(ts.avail_actions, -1).astype(jnp.int32)

        def branch(a):
            acts = jnp.where(jnp.arange(A) == actor, a, waiting)
            s2, ts2 = env.step(key, state, acts)
            later = self._expected(bp_params, key, s2, ts2, player, depth - 1)
            return ts2.reward[player] + jnp.where(ts2.episode_done, 0.0, later)

        values = jax.vmap(branch)(jnp.arange(nA))
        probs = jnp.where(ts.avail_actions[actor], jnp.exp(lp[actor]), 0.0)
        return jnp.where(ts.episode_done, 0.0, (probs * values).sum())

    def _exact(self, bp_params, key, env_state, player, action):
        state, ts = self._first_step(key, env_state, player, action)
        later = self._expected(bp_params, key, state, ts, player, self.max_depth - 1)
        return ts.reward[player] + jnp.where(ts.episode_done, 0.0, later)

    def _q_values(
        self, bp_params: Any, key: jax.Array, particles: Any, weights: jax.Array, player
    ) -> jax.Array:
        """``[nA]`` action values of ``player``; every action is rolled out (the update masks
        the illegal ones). Zero total weight falls back to equal weights."""
        nA = self.env.spec.num_actions
        R = max(self.config.rollouts, 1)
        K = weights.shape[0]
        keys = jax.random.split(key, K * R).reshape(K, R, -1)  # shared by every action
        fn = self._exact if self.config.rollouts == 0 else self._rollout

        def one(k, s, a):
            return fn(bp_params, k, s, player, a)

        per_r = jax.vmap(one, in_axes=(0, None, None))  # rollouts
        per_a = jax.vmap(per_r, in_axes=(None, None, 0))  # actions (same keys: CRN)
        per_k = jax.vmap(per_a, in_axes=(0, 0, None))  # particles
        returns = per_k(keys, particles, jnp.arange(nA))  # [K, nA, R]
        w = jnp.where(weights.sum() > 0, weights, jnp.ones_like(weights))
        w = w / w.sum()
        return jnp.einsum("k,ka->a", w, returns.mean(-1))

    def _decide(
        self,
        bp_params: Any,
        key: jax.Array,
        particles: Any,
        weights: jax.Array,
        player: jax.Array,
        log_pi: jax.Array,
        legal: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(action, searched log-policy [nA], q [nA])`` at one decision point, where
        ``log_pi [nA]`` is the blueprint's policy of the acting player there."""
        cfg = self.config
        k_q, k_play = jax.random.split(key)
        q = self._q_values(bp_params, k_q, particles, weights, player)
        magnet = log_pi if cfg.magnet == "blueprint" else None
        new = mmd_log_policy(log_pi, q, legal, cfg.eta, cfg.temperature, magnet, xp=jnp)
        if cfg.play == "argmax":
            action = jnp.argmax(jnp.where(legal, new, _NEG))
        else:
            action = jax.random.categorical(k_play, new)
        return action.astype(jnp.int32), new, q

    # --------------------------------------------------------------- playing games
    def play(
        self,
        bp_params: Any,
        key: jax.Array,
        num_games: int,
        belief: Any = None,
        search_players: Any = None,
        max_steps: int | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Play ``num_games`` games (vmapped, one jitted program): players in
        ``search_players`` (``[A]`` bool; default all) search at each of their decision points
        with ``belief(bp_params, key, ctx, samples) -> (particles, weights)``; the others, and
        every player when ``belief`` is ``None``, follow the blueprint (``play`` picks its
        argmax or a sample). A game lasts at most ``max_steps`` moves (default: the
        environment's limit, else 200), apart from the rollouts' ``max_depth``.
        Returns ``(returns [G], decisions [G])``."""
        fn, mask = self.compile_play(bp_params, num_games, belief, search_players, max_steps)
        return fn(bp_params, jax.random.split(key, num_games), mask)

    def compile_play(
        self, bp_params, num_games: int, belief=None, search_players=None, max_steps=None
    ):
        """The compiled program of :meth:`play` (compiled once per shape), and the mask of
        searching players; time the compile apart from the games with it."""
        A = self.env.spec.num_agents
        mask = jnp.ones((A,), bool) if search_players is None else jnp.asarray(search_players)
        steps = int(max_steps or self.env.spec.max_steps or 200)
        cache = self.__dict__.setdefault("_play_fns", {})
        key = (belief, steps, num_games)
        if key not in cache:
            one = lambda p, k, m: self._play_one(p, k, m, belief, steps)  # noqa: E731
            fn = jax.jit(jax.vmap(one, in_axes=(None, 0, None)))
            keys = jax.random.split(jax.random.PRNGKey(0), num_games)
            cache[key] = fn.lower(bp_params, keys, mask).compile()
        return cache[key], mask

    def _play_one(self, bp_params, key, search_mask, belief, max_steps: int):
        from marl.agents.search_beliefs import PlayContext

        env, cfg = self.env, self.config
        A, D, nA = env.spec.num_agents, env.spec.obs_dim, env.spec.num_actions
        key, k = jax.random.split(key)
        state, ts = env.reset(k)
        init = (
            key,
            state,
            ts,
            jnp.zeros((A, D)),
            jnp.ones((A, nA), bool),
            jnp.full((A,), -1, jnp.int32),
            jnp.zeros(()),
            jnp.array(0),
            jnp.array(False),
        )

        def cond(c):
            return (~c[8]) & (c[7] < max_steps)

        def body(c):
            key, state, ts, last_obs, last_avail, last_action, ret, t, _ = c
            key, k_b, k_s, k_play, k_step = jax.random.split(key, 5)
            actor = acting_player(ts.avail_actions)
            lp = self.blueprint.log_probs(bp_params, ts.obs, ts.avail_actions, ts.state)[actor]
            legal = ts.avail_actions[actor]
            if cfg.play == "argmax":
                action = jnp.argmax(jnp.where(legal, lp, _NEG)).astype(jnp.int32)
            else:
                action = jax.random.categorical(k_play, lp).astype(jnp.int32)
            if belief is not None:
                ctx = PlayContext(state.env_state, actor, last_obs, last_avail, last_action)
                particles, w = belief(bp_params, k_b, ctx, max(cfg.samples, 1))
                searched, _, _ = self._decide(bp_params, k_s, particles, w, actor, lp, legal)
                action = jnp.where(search_mask[actor], searched, action)
            waiting = jnp.argmax(ts.avail_actions, -1).astype(jnp.int32)
            actions = jnp.where(jnp.arange(A) == actor, action, waiting)
            last_obs = last_obs.at[actor].set(ts.obs[actor])
            last_avail = last_avail.at[actor].set(legal)
            last_action = last_action.at[actor].set(action)
            state, ts = env.step(k_step, state, actions)
            ret = ret + ts.reward[0]
            return key, state, ts, last_obs, last_avail, last_action, ret, t + 1, ts.episode_done

        out = jax.lax.while_loop(cond, body, init)
        return out[6], out[7]
