"""The PPO core and the actor-critic policies: GAE, value normalisation, masking, the
teacher-forced pass and per-agent parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marl.agents.actor_critic import ActorCriticPolicy, NetworkConfig
from marl.envs import make_array_env
from marl.policy import PolicyInput
from marl.ppo import ValueNorm, gae


def gae_reference(r, v, d, last, gamma, lam):
    T = r.shape[0]
    adv = np.zeros_like(r)
    nxt_adv, nxt_v = np.zeros_like(last), last
    for t in reversed(range(T)):
        nd = 1.0 - d[t][..., None]
        delta = r[t] + gamma * nxt_v * nd - v[t]
        nxt_adv = delta + gamma * lam * nd * nxt_adv
        adv[t], nxt_v = nxt_adv, v[t]
    return adv


def test_gae_matches_reference():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(2, 7, 3, 2)).astype(np.float32)
    d = rng.random((7, 3)) < 0.3
    last = rng.normal(size=(3, 2)).astype(np.float32)
    adv, tgt = gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(d), jnp.asarray(last), 0.9, 0.8)
    ref = gae_reference(r, v, d.astype(np.float32), last, 0.9, 0.8)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tgt, ref + v, rtol=1e-5, atol=1e-6)


def test_value_norm_tracks_mean_and_std():
    vn = ValueNorm.create()
    x = jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, size=(4096,)), jnp.float32)
    for _ in range(50):
        vn = vn.update(x, jnp.ones_like(x), beta=0.9)
    mean, std = vn.stats()
    assert abs(float(mean) - 3.0) < 0.1 and abs(float(std) - 2.0) < 0.1
    np.testing.assert_allclose(vn.denormalize(vn.normalize(x)), x, rtol=1e-5, atol=1e-5)


def _inputs(env, T, E, key):
    state, ts = env.reset_batch(key, E)
    obs, st, av, first, alive = [], [], [], [], []
    for t in range(T):
        obs.append(ts.obs), st.append(ts.state), av.append(ts.avail_actions)
        alive.append(ts.alive), first.append(jnp.full((E,), t == 0) | ts.episode_done)
        a = env.random_actions(jax.random.fold_in(key, t), ts.avail_actions)
        state, ts = env.step_batch(jax.random.fold_in(key, 100 + t), state, a)
    return PolicyInput(*(jnp.stack(x) for x in (obs, st, av, first, alive)))


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("centralised", [False, True])
def test_teacher_forced_pass_equals_rollout(recurrent, centralised):
    """logp and value from step-by-step acting equal one pass over the whole sequence, also
    across episode boundaries for the GRU (its state resets where `first`)."""
    env = make_array_env("mpe/simple_spread", max_steps=4)
    pol = ActorCriticPolicy(
        env.spec,
        centralised=centralised,
        network=NetworkConfig(recurrent=recurrent, gru_features=16),
    )
    params = pol.init(jax.random.PRNGKey(0))
    T, E = 10, 3
    inp = _inputs(env, T, E, jax.random.PRNGKey(1))
    h0 = pol.initial_hidden(E)
    h, acts, logps, values = h0, [], [], []
    for t in range(T):
        step_inp = jax.tree.map(lambda x, t=t: x[t : t + 1], inp)
        h, a, lp, v = pol.act(params, h, step_inp, jax.random.PRNGKey(t))
        acts.append(a[0]), logps.append(lp[0]), values.append(v[0])
    logp, entropy, value = pol.evaluate(params, h0, inp, jnp.stack(acts))
    np.testing.assert_allclose(logp, jnp.stack(logps), atol=1e-5)
    np.testing.assert_allclose(value, jnp.stack(values), atol=1e-5)
    assert entropy.shape == (T, E, 3) and bool((entropy > 0).all())


def test_masked_actions_are_never_taken():
    env = make_array_env("mpe/simple_speaker_listener")  # the speaker has 3 of 5 actions
    pol = ActorCriticPolicy(env.spec, centralised=True, network=NetworkConfig())
    params = pol.init(jax.random.PRNGKey(0))
    inp = _inputs(env, 1, 256, jax.random.PRNGKey(1))
    _, a, logp, _ = pol.act(params, pol.initial_hidden(256), inp, jax.random.PRNGKey(2))
    assert int(a[0, :, 0].max()) <= 2 and int(a[0, :, 1].max()) == 4
    _, a, _, _ = pol.act(params, pol.initial_hidden(256), inp, jax.random.PRNGKey(2), greedy=True)
    assert int(a[0, :, 0].max()) <= 2


def test_per_agent_parameters_and_continuous_actions():
    env = make_array_env("mpe/simple_speaker_listener", continuous=True)
    pol = ActorCriticPolicy(
        env.spec, centralised=False, network=NetworkConfig(), share_params=False
    )
    params = pol.init(jax.random.PRNGKey(0))
    leaves = jax.tree.leaves(params)
    assert all(x.shape[0] == 2 for x in leaves)  # one set per agent
    assert not np.allclose(
        params["actor"]["params"]["torso"]["Dense_0"]["kernel"][0],
        params["actor"]["params"]["torso"]["Dense_0"]["kernel"][1],
    )
    inp = _inputs(env, 2, 4, jax.random.PRNGKey(1))
    h, a, logp, v = pol.act(
        params, pol.initial_hidden(4), jax.tree.map(lambda x: x[:1], inp), jax.random.PRNGKey(2)
    )
    assert a.shape == (1, 4, 2, 5) and a.dtype == jnp.float32
    # the speaker's padded action dimensions (3 of 5 real) do not count in its log-prob
    a2 = a.at[..., 0, 3:].set(100.0)
    lp1, _, _ = pol.evaluate(params, pol.initial_hidden(4), jax.tree.map(lambda x: x[:1], inp), a)
    lp2, _, _ = pol.evaluate(params, pol.initial_hidden(4), jax.tree.map(lambda x: x[:1], inp), a2)
    np.testing.assert_allclose(lp1[..., 0], lp2[..., 0], atol=1e-5)
    np.testing.assert_allclose(lp1, logp, atol=1e-5)
