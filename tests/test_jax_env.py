"""The registry and the array view of pure-JAX environments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marl.envs import JaxArrayEnv, make, make_array_env, names
from marl.envs.core import TimeStep
from marl.errors import ConfigError, UnknownNameError


def rollout(env: JaxArrayEnv, key, num_envs: int, steps: int, actions_fn=None):
    """Random (or given) actions for `steps` steps; the `[time, env, ...]` trajectory."""
    key_reset, key_run = jax.random.split(key)
    state, ts = env.reset_batch(key_reset, num_envs)

    def body(carry, k):
        state, ts = carry
        k_act, k_step = jax.random.split(k)
        a = env.random_actions(k_act, ts.avail_actions) if actions_fn is None else actions_fn(ts)
        state, ts = env.step_batch(k_step, state, a)
        return (state, ts), (a, ts)

    _, (actions, traj) = jax.lax.scan(body, (state, ts), jax.random.split(key_run, steps))
    return ts, actions, traj


@pytest.fixture(scope="module")
def spread():
    return make_array_env("mpe/simple_spread")


@pytest.fixture(scope="module")
def spread_traj(spread):
    return jax.jit(rollout, static_argnums=(0, 2, 3))(spread, jax.random.PRNGKey(0), 4, 60)


def test_registry_lists_the_required_families():
    required = {
        "mpe/simple_spread",
        "mpe/simple_tag",
        "mpe/simple_speaker_listener",
        "mpe/simple_reference",
        "smax/3m",
        "smax/2s3z",
        "smax/5m_vs_6m",
        "hanabi",
    }
    assert required <= set(names())


def test_unknown_name_names_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'mpe/simple_spread'"):
        make("mpe/simple_sprad")


def test_unknown_kwarg_and_bad_value():
    with pytest.raises(
        UnknownNameError, match="unknown argument of mpe/simple_spread: 'num_agnts'"
    ):
        make("mpe/simple_spread", num_agnts=4)
    with pytest.raises(ConfigError, match="N must be a positive integer"):
        make("mpe/simple_spread", N=0)
    with pytest.raises(ConfigError, match="cannot build mpe/simple_reference"):
        make("mpe/simple_reference", num_agents=3)
    # outside the listed variants: one clear line, not an XLA out-of-memory error later
    with pytest.raises(ConfigError, match=r"N=99 is not one of its variants \(N = 2, 3,"):
        make("mpe/simple_spread", N=99)


@pytest.mark.parametrize("n", [2, 5, 8])
def test_agent_count_variants(n):
    spec = make_array_env("mpe/simple_spread", N=n).spec
    assert spec.num_agents == n
    assert spec.obs_sizes == (4 + (n - 1) * 4 + 2 * n,) * n
    assert spec.obs_dim == spec.obs_sizes[0] + n  # agent id one-hot
    marines = make_array_env("smax/marines", N=n, M=n + 1).spec
    assert marines.num_agents == n


def test_shapes_and_dtypes(spread, spread_traj):
    ts0, actions, traj = spread_traj
    A, D, nA, S = 3, 18 + 3, 5, 54
    assert spread.spec.obs_dim == D and spread.spec.state_dim == S
    expected = {
        "obs": ((60, 4, A, D), jnp.float32),
        "avail_actions": ((60, 4, A, nA), jnp.bool_),
        "state": ((60, 4, S), jnp.float32),
        "reward": ((60, 4, A), jnp.float32),
        "done": ((60, 4, A), jnp.bool_),
        "episode_done": ((60, 4), jnp.bool_),
        "truncated": ((60, 4), jnp.bool_),
        "alive": ((60, 4, A), jnp.bool_),
        "episode_return": ((60, 4, A), jnp.float32),
        "episode_length": ((60, 4), jnp.int32),
        "episode_won": ((60, 4), jnp.bool_),
    }
    for field in TimeStep._fields:
        shape, dtype = expected[field]
        assert getattr(traj, field).shape == shape, field
        assert getattr(traj, field).dtype == dtype, field
    assert ts0.obs.shape == (4, A, D)
    assert actions.shape == (60, 4, A) and actions.dtype == jnp.int32


def test_agent_id_and_concat_state(spread_traj):
    _, _, traj = spread_traj
    np.testing.assert_array_equal(traj.obs[..., 18:], np.broadcast_to(np.eye(3), (60, 4, 3, 3)))
    # MPE has no global state: the documented construction is the concatenated raw obs.
    np.testing.assert_array_equal(traj.state, traj.obs[..., :18].reshape(60, 4, 54))


def test_auto_reset_and_episode_statistics(spread_traj):
    _, _, traj = spread_traj
    done = np.asarray(traj.episode_done)
    # 25-step episodes: steps 25 and 50 end them, in every copy.
    assert set(np.nonzero(done[:, 0])[0]) == {24, 49}
    assert done.sum() == 8
    assert np.all(np.asarray(traj.truncated) == done)
    assert np.all(np.asarray(traj.episode_length)[done] == 25)
    np.testing.assert_allclose(traj.episode_return[24], traj.reward[:25].sum(0), rtol=1e-5)
    np.testing.assert_allclose(traj.episode_return[49], traj.reward[25:50].sum(0), rtol=1e-5)
    assert np.all(np.asarray(traj.done)[done] == True)  # noqa: E712
    assert np.all(np.asarray(traj.done)[~done] == False)  # noqa: E712
    # after the reset the observations restart from a new random layout
    assert not np.allclose(traj.obs[24], traj.obs[23])


def test_same_as_jaxmarl_step():
    """The view is a faithful re-layout of JaxMARL's own step (same keys, same auto-reset)."""
    raw = make("mpe/simple_spread")
    view = JaxArrayEnv(raw, agent_id=False)
    key = jax.random.PRNGKey(3)
    obs, raw_state = raw.reset(key)
    state, ts = view.reset(key)
    step_raw, step_view = jax.jit(raw.step), jax.jit(view.step)
    for t in range(30):
        k = jax.random.fold_in(key, t)
        a = jax.random.randint(k, (3,), 0, 5)
        obs, raw_state, rew, dones, _ = step_raw(
            k, raw_state, {f"agent_{i}": a[i] for i in range(3)}
        )
        state, ts = step_view(k, state, a)
        # equal up to float32 rounding (the two programs fuse differently)
        np.testing.assert_allclose(
            ts.obs, jnp.stack([obs[f"agent_{i}"] for i in range(3)]), atol=1e-6
        )
        np.testing.assert_allclose(
            ts.reward, jnp.stack([rew[f"agent_{i}"] for i in range(3)]), atol=1e-6
        )
        assert bool(ts.episode_done) == bool(dones["__all__"])


def test_seeding(spread, spread_traj):
    _, _, a = spread_traj
    _, _, b = jax.jit(rollout, static_argnums=(0, 2, 3))(spread, jax.random.PRNGKey(0), 4, 60)
    _, _, c = jax.jit(rollout, static_argnums=(0, 2, 3))(spread, jax.random.PRNGKey(1), 4, 60)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.obs, c.obs)


def test_heterogeneous_observations_are_padded():
    env = make_array_env("mpe/simple_tag")
    spec = env.spec
    assert spec.obs_sizes == (16, 16, 16, 14) and spec.obs_dim == 16 + 4
    state, ts = env.reset(jax.random.PRNGKey(0))
    state, ts = jax.jit(env.step)(jax.random.PRNGKey(1), state, jnp.array([1, 2, 3, 4]))
    assert np.all(np.asarray(ts.obs)[3, 14:16] == 0.0)  # the prey's padding
    assert np.any(np.asarray(ts.obs)[0, 14:16] != 0.0)  # a predator sees the prey's velocity
    mask = spec.obs_mask()
    assert mask[3, :14].all() and not mask[3, 14:16].any() and mask[3, 16:].all()
    assert spec.heterogeneous


def test_heterogeneous_actions_are_masked():
    env = make_array_env("mpe/simple_speaker_listener")
    assert env.spec.action_sizes == (3, 5)
    _, ts = env.reset(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(ts.avail_actions, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    acts = env.random_actions(
        jax.random.PRNGKey(1), jnp.broadcast_to(ts.avail_actions, (500, 2, 5))
    )
    assert int(acts[:, 0].max()) == 2 and int(acts[:, 1].max()) == 4
    # simple_world_comm mixes obs sizes 34/28 and action counts 20/5 in one team.
    wc = make_array_env("mpe/simple_world_comm")
    assert wc.spec.obs_sizes == (34,) * 4 + (28,) * 2
    assert wc.spec.action_sizes == (20,) + (5,) * 5 and wc.spec.num_actions == 20
    state, ts = wc.reset(jax.random.PRNGKey(0))
    state, ts = jax.jit(wc.step)(jax.random.PRNGKey(1), state, jnp.zeros((6,), jnp.int32))
    assert ts.obs.shape == (6, wc.spec.obs_dim) and bool(jnp.isfinite(ts.obs).all())


def test_random_actions_are_uniform_over_legal_actions():
    env = make_array_env("smax/3m")
    nA = env.spec.num_actions
    avail = np.zeros((3, nA), bool)
    avail[0, [0, 2, 3]] = True  # gaps between legal actions
    avail[1] = True
    # avail[2]: no legal action -> action 0
    acts = np.asarray(
        env.random_actions(jax.random.PRNGKey(3), jnp.broadcast_to(avail, (30_000, 3, nA)))
    )
    freq = np.bincount(acts[:, 0], minlength=nA) / len(acts)
    np.testing.assert_allclose(freq[[0, 2, 3]], 1 / 3, atol=0.015)
    assert freq[[1, *range(4, nA)]].sum() == 0
    np.testing.assert_allclose(
        np.bincount(acts[:, 1], minlength=nA) / len(acts), 1 / nA, atol=0.015
    )
    assert (acts[:, 2] == 0).all()


def test_continuous_actions_are_clipped():
    env = make_array_env("mpe/simple_spread", continuous=True)
    assert env.spec.action_type == "continuous" and env.spec.num_actions == 5
    state, _ = env.reset(jax.random.PRNGKey(0))
    big = jnp.full((3, 5), 7.0)
    d = env.actions_to_dict(big)
    assert float(d["agent_0"].max()) == env.spec.action_high[0][0]
    s1, ts1 = jax.jit(env.step)(jax.random.PRNGKey(1), state, big)
    s2, ts2 = jax.jit(env.step)(jax.random.PRNGKey(1), state, jnp.full((3, 5), 1.0))
    np.testing.assert_array_equal(ts1.obs, ts2.obs)


@pytest.fixture(scope="module")
def smax():
    return make_array_env("smax/3m")


def test_smax_state_death_and_win(smax):
    assert smax.spec.state_source == "env" and smax.spec.has_win
    state, ts = smax.reset(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(ts.state, smax.env.get_world_state(state.env_state).reshape(-1))
    es = state.env_state
    # Ally 0 dead: absent, zero observation, only the no-op legal.
    inner = es.state.replace(
        unit_alive=es.state.unit_alive.at[0].set(False),
        unit_health=es.state.unit_health.at[0].set(0.0),
    )
    state, ts = smax.restart_from(es.replace(state=inner))
    np.testing.assert_array_equal(ts.alive, [False, True, True])
    assert float(jnp.abs(ts.obs[0]).sum()) == 0.0
    assert ts.avail_actions[0].sum() == 1
    step = jax.jit(smax.step)
    state, ts = step(jax.random.PRNGKey(1), state, jnp.zeros((3,), jnp.int32))
    assert not bool(ts.alive[0]) and bool(ts.done[0]) and not bool(ts.episode_done)
    # Every enemy dead: the next step ends the episode, won, and not by time limit.
    inner = state.env_state.state
    enemies = jnp.arange(6) >= 3
    inner = inner.replace(
        unit_alive=inner.unit_alive & ~enemies,
        unit_health=jnp.where(enemies, 0.0, inner.unit_health),
    )
    state = state.replace(env_state=state.env_state.replace(state=inner))
    state, ts = step(jax.random.PRNGKey(2), state, jnp.zeros((3,), jnp.int32))
    assert bool(ts.episode_done) and bool(ts.episode_won) and not bool(ts.truncated)
    assert bool(ts.alive.all())  # the new episode


def test_smax_random_play_is_consistent(smax):
    _, _, traj = jax.jit(rollout, static_argnums=(0, 2, 3))(smax, jax.random.PRNGKey(0), 2, 80)
    alive, done = np.asarray(traj.alive), np.asarray(traj.done)
    assert (~alive).any()  # random play loses units
    ep = np.asarray(traj.episode_done)
    # a dead agent stays dead until the episode ends, and has zero observations
    assert np.all(np.asarray(traj.obs)[~alive] == 0.0)
    assert np.all(done[~ep] == ~alive[~ep])


def test_hanabi_is_turn_based():
    env = make_array_env("hanabi")
    assert env.spec.turn_based and env.spec.num_agents == 2
    _, ts = env.reset(jax.random.PRNGKey(0))
    legal = np.asarray(ts.avail_actions).sum(-1)
    assert sorted(legal.tolist())[0] == 1  # the waiting player has only the no-op
    assert sorted(legal.tolist())[1] > 1


def test_restart_from_clones_a_state(spread):
    state, _ = spread.reset(jax.random.PRNGKey(0))
    states, ts = jax.vmap(spread.restart_from)(
        jax.tree.map(lambda x: jnp.broadcast_to(x, (8, *x.shape)), state.env_state)
    )
    assert ts.obs.shape == (8, 3, 21)
    assert np.all(np.asarray(ts.obs) == np.asarray(ts.obs)[0])
    actions = jax.random.randint(jax.random.PRNGKey(1), (8, 3), 0, 5)
    _, ts = spread.step_batch(jax.random.PRNGKey(2), states, actions)
    assert not np.allclose(ts.obs[0], ts.obs[1])  # copies diverge under different actions


def test_smax_episodes_last_max_steps():
    env = make_array_env("smax/3m", max_steps=5)
    assert env.spec.max_steps == 5
    state, ts = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    ends = []
    for t in range(10):
        state, ts = step(jax.random.PRNGKey(t), state, jnp.zeros((3,), jnp.int32))
        ends.append(bool(ts.episode_done))
        if ends[-1]:
            assert int(ts.episode_length) == 5 and bool(ts.truncated)
    assert ends == [False] * 4 + [True] + [False] * 4 + [True]
