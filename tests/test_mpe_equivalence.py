"""The JAX `mpe/simple_spread` and mpe2's `simple_spread_v3` are the same game: from the same
start, under the same actions, our two array views give the same observations, rewards and
episode boundaries (JaxMARL's MPE is built to match mpe2; this proves our wrapping keeps it)."""

import jax
import jax.numpy as jnp
import numpy as np
from mpe2 import simple_spread_v3

from marl.envs import make_array_env, pettingzoo_vector_env


def _jax_state_from_mpe2(jax_env, world, template):
    """The JaxMARL state of an mpe2 world (entities: agents, then landmarks)."""
    ents = list(world.agents) + list(world.landmarks)
    return template.replace(
        p_pos=jnp.asarray(np.stack([e.state.p_pos for e in ents]), jnp.float32),
        p_vel=jnp.asarray(np.stack([e.state.p_vel for e in ents]), jnp.float32),
        c=jnp.asarray(np.stack([a.state.c for a in world.agents]), jnp.float32),
        step=jnp.asarray(0, template.step.dtype),
        done=jnp.zeros_like(template.done),
    )


def test_jax_simple_spread_matches_mpe2():
    jax_env = make_array_env("mpe/simple_spread")
    with pettingzoo_vector_env(
        lambda: simple_spread_v3.parallel_env(max_cycles=25),
        1,
        mode="sync",
        name="mpe2/simple_spread_v3",
    ) as pz:
        assert pz.spec.obs_dim == jax_env.spec.obs_dim
        assert pz.spec.agents == jax_env.spec.agents
        ts_pz = pz.reset(seed=7)
        world = pz.unwrapped_envs[0].unwrapped.world
        state0, _ = jax_env.reset(jax.random.PRNGKey(0))
        env_state = _jax_state_from_mpe2(jax_env, world, state0.env_state)
        state, ts_jax = jax_env.restart_from(env_state)
        np.testing.assert_allclose(ts_jax.obs, ts_pz.obs[0], atol=1e-4)
        step = jax.jit(jax_env.step)
        rng = np.random.default_rng(0)
        for t in range(25):
            actions = rng.integers(0, 5, size=(3,)).astype(np.int32)
            state, ts_jax = step(jax.random.PRNGKey(t), state, jnp.asarray(actions))
            ts_pz = pz.step(actions[None])
            np.testing.assert_allclose(
                ts_jax.reward, ts_pz.reward[0], atol=1e-4, err_msg=f"reward at step {t}"
            )
            assert bool(ts_jax.episode_done) == bool(ts_pz.episode_done[0]), t
            if t < 24:  # at the last step both auto-reset to different random starts
                np.testing.assert_allclose(
                    ts_jax.obs, ts_pz.obs[0], atol=1e-4, err_msg=f"observation at step {t}"
                )
        # both ended their 25-step episode here, with the same return
        assert bool(ts_jax.episode_done) and int(ts_jax.episode_length) == 25
        np.testing.assert_allclose(ts_jax.episode_return, ts_pz.episode_return[0], atol=1e-3)
