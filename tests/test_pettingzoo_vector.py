"""Tests of the PettingZoo vector env (marl.envs.pettingzoo_vector)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from mpe2 import simple_speaker_listener_v4, simple_spread_v3, simple_tag_v3
from pettingzoo.classic import connect_four_v3, tictactoe_v3
from pz_fixtures import LeavingEnv, TurnEnv

from marl.envs.core import TimeStep
from marl.envs.pettingzoo_vector import PettingZooVectorEnv, pettingzoo_vector_env
from marl.errors import ActionError, MarlError, WorkerError

FIELD_DTYPES = {
    "obs": np.float32,
    "avail_actions": np.bool_,
    "state": np.float32,
    "reward": np.float32,
    "done": np.bool_,
    "episode_done": np.bool_,
    "truncated": np.bool_,
    "alive": np.bool_,
    "episode_return": np.float32,
    "episode_length": np.int32,
    "episode_won": np.bool_,
}


def spread(max_cycles=5, **kw):
    return lambda: simple_spread_v3.parallel_env(max_cycles=max_cycles, **kw)


def tag(max_cycles=5):
    return lambda: simple_tag_v3.parallel_env(max_cycles=max_cycles)


def check_layout(venv: PettingZooVectorEnv, ts: TimeStep) -> None:
    spec, E = venv.spec, venv.num_envs
    A, D, nA, S = spec.num_agents, spec.obs_dim, spec.num_actions, spec.state_dim
    shapes = {
        "obs": (E, A, D),
        "avail_actions": (E, A, nA),
        "state": (E, S),
        "reward": (E, A),
        "done": (E, A),
        "episode_done": (E,),
        "truncated": (E,),
        "alive": (E, A),
        "episode_return": (E, A),
        "episode_length": (E,),
        "episode_won": (E,),
    }
    for name, dtype in FIELD_DTYPES.items():
        x = getattr(ts, name)
        assert isinstance(x, np.ndarray), name
        assert x.shape == shapes[name], (name, x.shape)
        assert x.dtype == dtype, (name, x.dtype)


def random_actions(rng: np.random.Generator, ts: TimeStep) -> np.ndarray:
    """A uniformly random legal discrete action for every agent: int32 [E, A]."""
    u = rng.random(ts.avail_actions.shape) * ts.avail_actions
    return u.argmax(-1).astype(np.int32)


def assert_fresh_reset(ts: TimeStep) -> None:
    assert not ts.reward.any() and not ts.done.any()
    assert not ts.episode_done.any() and not ts.truncated.any()
    assert not ts.episode_return.any() and not ts.episode_length.any()
    assert not ts.episode_won.any()


# --- layout -------------------------------------------------------------------------------


def test_simple_spread_layout_and_env_state():
    with pettingzoo_vector_env(spread(), 2, mode="sync") as venv:
        spec = venv.spec
        assert spec.name == "simple_spread_v3"
        assert spec.agents == ("agent_0", "agent_1", "agent_2")
        assert spec.obs_sizes == (18, 18, 18) and spec.obs_dim == 21
        assert spec.action_type == "discrete" and spec.action_sizes == (5, 5, 5)
        assert spec.state_source == "env" and spec.state_dim == 54
        assert spec.max_steps == 5 and not spec.turn_based
        ts = venv.reset(seed=0)
        check_layout(venv, ts)
        assert_fresh_reset(ts)
        assert ts.alive.all() and ts.avail_actions.all()
        for i, env in enumerate(venv.unwrapped_envs):
            np.testing.assert_array_equal(ts.state[i], env.state())
        np.testing.assert_array_equal(ts.obs[:, :, 18:], np.broadcast_to(np.eye(3), (2, 3, 3)))
        ts = venv.step(np.zeros((2, 3), np.int32))
        check_layout(venv, ts)
        for i, env in enumerate(venv.unwrapped_envs):
            np.testing.assert_array_equal(ts.state[i], env.state())
            # the env's state is the concatenation of the observations here
            np.testing.assert_array_equal(ts.state[i], ts.obs[i, :, :18].reshape(-1))


def test_simple_tag_heterogeneous_obs_padding():
    with pettingzoo_vector_env(tag(), 3) as venv:
        spec = venv.spec
        assert spec.agents == ("adversary_0", "adversary_1", "adversary_2", "agent_0")
        assert spec.obs_sizes == (16, 16, 16, 14) and spec.obs_dim == 20
        assert spec.agent_classes == {
            "adversary": ("adversary_0", "adversary_1", "adversary_2"),
            "agent": ("agent_0",),
        }
        ts = venv.reset(seed=1)
        check_layout(venv, ts)
        rng = np.random.default_rng(0)
        for _ in range(3):
            ts = venv.step(random_actions(rng, ts))
            check_layout(venv, ts)
            # the good agent's features 14, 15 are padding
            assert not ts.obs[:, 3, 14:16].any()
            assert np.abs(ts.obs[:, 3, :14]).sum() > 0
            np.testing.assert_array_equal(ts.obs[:, :, 16:], np.broadcast_to(np.eye(4), (3, 4, 4)))
            mask = spec.obs_mask()
            assert not ts.obs[:, ~mask].any()
            assert spec.state_source == "env"


def test_speaker_listener_heterogeneous_actions():
    make = lambda: simple_speaker_listener_v4.parallel_env(max_cycles=5)  # noqa: E731
    with pettingzoo_vector_env(make, 2, mode="sync") as venv:
        spec = venv.spec
        assert spec.agents == ("speaker_0", "listener_0")
        assert spec.action_sizes == (3, 5) and spec.num_actions == 5
        assert spec.obs_sizes == (3, 11)
        ts = venv.reset(seed=0)
        check_layout(venv, ts)
        np.testing.assert_array_equal(ts.avail_actions[:, 0], [[1, 1, 1, 0, 0]] * 2)
        assert ts.avail_actions[:, 1].all()
        assert not ts.obs[:, 0, 3:11].any()
        ts = venv.step(np.array([[2, 4], [0, 3]]))
        check_layout(venv, ts)
        with pytest.raises(ActionError, match=r"copy 1, agent 'speaker_0': action 3 is out of"):
            venv.step(np.array([[2, 4], [3, 3]]))


# --- episodes, auto-reset -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_auto_reset_after_max_cycles(mode):
    rng = np.random.default_rng(3)
    with pettingzoo_vector_env(spread(max_cycles=5), 2, mode=mode) as venv:
        ts = venv.reset(seed=5)
        total = np.zeros((2, 3))
        for t in range(1, 6):
            ts = venv.step(random_actions(rng, ts))
            total += ts.reward
            if t < 5:
                assert not ts.episode_done.any() and not ts.done.any()
                assert not ts.episode_length.any()
        assert ts.episode_done.all() and ts.truncated.all() and ts.done.all()
        np.testing.assert_array_equal(ts.episode_length, [5, 5])
        np.testing.assert_allclose(ts.episode_return, total, rtol=1e-5)
        assert not ts.episode_won.any()
        assert ts.alive.all()  # the next episode's first step
        if mode == "sync":
            for i, env in enumerate(venv.unwrapped_envs):
                assert env.agents and env.unwrapped.steps == 0
                np.testing.assert_array_equal(ts.state[i], env.state())
        ts = venv.step(random_actions(rng, ts))
        assert not ts.episode_done.any() and not ts.episode_return.any()


def test_max_steps_limit_truncates():
    with pettingzoo_vector_env(spread(max_cycles=25), 2, mode="sync", max_steps=3) as venv:
        assert venv.spec.max_steps == 3
        ts = venv.reset(seed=0)
        for _ in range(3):
            ts = venv.step(np.zeros((2, 3), np.int64))
        assert ts.episode_done.all() and ts.truncated.all()
        np.testing.assert_array_equal(ts.episode_length, [3, 3])
        assert venv.unwrapped_envs[0].unwrapped.steps == 0  # the copy was reset


# --- seeding, sync vs async ---------------------------------------------------------------


def run(venv, seed, steps, action_seed=0):
    rng = np.random.default_rng(action_seed)
    out = [venv.reset(seed=seed)]
    for _ in range(steps):
        out.append(venv.step(random_actions(rng, out[-1])))
    return out


def assert_same(run_a, run_b):
    for ta, tb in zip(run_a, run_b, strict=True):
        for name in TimeStep._fields:
            np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name), err_msg=name)


def test_seeding_reproduces_and_differs():
    with (
        pettingzoo_vector_env(spread(), 2) as a,
        pettingzoo_vector_env(spread(), 2) as b,
    ):
        ra = run(a, 7, 8)  # crosses an auto-reset (max_cycles 5)
        rb = run(b, 7, 8)
        assert_same(ra, rb)
        assert not np.array_equal(ra[0].obs[0], ra[0].obs[1])  # copies get seed + i
        rc = run(b, 8, 8)
        assert not np.array_equal(ra[0].obs, rc[0].obs)
        # reset(seed=8) gives copy 0 what reset(seed=7) gave copy 1
        np.testing.assert_array_equal(rc[0].obs[0], ra[0].obs[1])


def test_first_reset_without_seed_uses_constructor_seed():
    with (
        pettingzoo_vector_env(spread(), 2, mode="sync", seed=11) as a,
        pettingzoo_vector_env(spread(), 2, mode="sync") as b,
    ):
        np.testing.assert_array_equal(a.reset().obs, b.reset(seed=11).obs)


def test_sync_and_async_identical():
    with (
        pettingzoo_vector_env(tag(), 3, mode="sync") as s,
        pettingzoo_vector_env(tag(), 3, mode="async", num_workers=2) as a,
    ):
        assert s.spec == a.spec
        assert a.num_workers == 2
        assert_same(run(s, 3, 7), run(a, 3, 7))


def test_forkserver_workers():
    with (
        pettingzoo_vector_env(spread(), 2, mode="sync") as s,
        pettingzoo_vector_env(spread(), 2, mode="async", context="forkserver") as a,
    ):
        assert_same(run(s, 1, 3), run(a, 1, 3))


# --- agents leaving, wins -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_agent_leaves_mid_episode(mode):
    with pettingzoo_vector_env(lambda: LeavingEnv(win=True), 2, mode=mode, has_win=True) as venv:
        spec = venv.spec
        assert spec.obs_sizes == (2, 2, 3) and spec.obs_dim == 6
        assert spec.state_source == "concat_obs" and spec.state_dim == 7
        assert spec.has_win
        ts = venv.reset(seed=0)
        np.testing.assert_array_equal(ts.obs[1, 2], [0, 3, 1, 0, 0, 1])  # [t, j+1, seed] + id
        np.testing.assert_array_equal(ts.state[1], [0, 1, 0, 2, 0, 3, 1])
        np.testing.assert_array_equal(ts.avail_actions[0], [[1, 1, 0]] * 3)  # mask from infos
        ts = venv.step(np.ones((2, 3), np.int32))
        assert ts.alive.all() and not ts.done.any()
        np.testing.assert_array_equal(ts.reward[0], [1, 2, 3])
        ts = venv.step(np.ones((2, 3), np.int32))  # step 2: b_1 leaves
        np.testing.assert_array_equal(ts.alive, [[1, 0, 1]] * 2)
        np.testing.assert_array_equal(ts.done, [[0, 1, 0]] * 2)
        np.testing.assert_array_equal(ts.reward[0], [1, 2, 3])
        assert not ts.obs[:, 1].any()  # whole row zero, id included
        np.testing.assert_array_equal(ts.obs[0, 0], [2, 1, 0, 1, 0, 0])
        np.testing.assert_array_equal(ts.state[0], [2, 1, 0, 0, 2, 3, 0])
        np.testing.assert_array_equal(ts.avail_actions[:, 1], [[1, 0, 0]] * 2)
        # the absent agent's action is neither validated nor passed on
        ts = venv.step(np.array([[1, 99, 0], [0, -5, 1]]))
        np.testing.assert_array_equal(ts.reward[0], [1, 0, 3])
        assert not ts.done.any() and not ts.alive[:, 1].any()
        if mode == "sync":
            assert venv.unwrapped_envs[0].received[-1] == {"a_0": 1, "c_2": 0}
        ts = venv.step(np.zeros((2, 3), np.int32))  # step 4: time limit
        assert ts.episode_done.all() and ts.truncated.all() and ts.episode_won.all()
        np.testing.assert_array_equal(ts.done, [[1, 0, 1]] * 2)
        np.testing.assert_array_equal(ts.episode_length, [4, 4])
        np.testing.assert_array_equal(ts.episode_return, [[4, 4, 12]] * 2)
        assert ts.alive.all()
        np.testing.assert_array_equal(ts.obs[0, :, :2], [[0, 1], [0, 2], [0, 3]])
        with pytest.raises(ActionError, match=r"copy 0, agent 'a_0': action 2 is illegal"):
            venv.step(np.array([[2, 0, 0], [0, 0, 0]]))


def test_agent_id_off():
    with pettingzoo_vector_env(LeavingEnv, 2, mode="sync", agent_id=False) as venv:
        assert venv.spec.obs_dim == 3
        ts = venv.reset(seed=0)
        np.testing.assert_array_equal(ts.obs[0], [[0, 1, 0], [0, 2, 0], [0, 3, 0]])


# --- turn-based games -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_tictactoe_masks_and_turns(mode):
    with pettingzoo_vector_env(lambda: tictactoe_v3.env(), 2, mode=mode) as venv:
        spec = venv.spec
        assert spec.turn_based and spec.agents == ("player_1", "player_2")
        assert spec.obs_sizes == (18, 18) and spec.state_source == "concat_obs"
        ts = venv.reset(seed=0)
        check_layout(venv, ts)
        np.testing.assert_array_equal(ts.avail_actions[:, 0], np.ones((2, 9), bool))
        np.testing.assert_array_equal(ts.avail_actions[:, 1], [[1] + [0] * 8] * 2)
        # player_1 takes square 4 in copy 0, square 0 in copy 1; player_2's action is ignored
        ts = venv.step(np.array([[4, 99], [0, -1]]))
        expected = np.ones((2, 9), bool)
        expected[0, 4] = expected[1, 0] = False
        np.testing.assert_array_equal(ts.avail_actions[:, 1], expected)
        np.testing.assert_array_equal(ts.avail_actions[:, 0], [[1] + [0] * 8] * 2)
        if mode == "sync":
            for i, env in enumerate(venv.unwrapped_envs):
                mask = env.observe(env.agent_selection)["action_mask"].astype(bool)
                np.testing.assert_array_equal(ts.avail_actions[i, 1], mask)
        with pytest.raises(ActionError, match=r"copy 0, agent 'player_2': action 4 is illegal"):
            venv.step(np.array([[0, 4], [0, 1]]))
        # play to the end: player_1 wins copy 0 with 4, 0, 8 against 1, 2
        moves = [(1, 1), (0, 2), (2, 3), (8, 4)]
        total = np.zeros((2, 2))
        for m0, m1 in moves:
            acts = np.zeros((2, 2), np.int32)
            mover = int(np.flatnonzero(ts.avail_actions[0].sum(-1) > 1)[0])
            acts[0, mover] = m0
            mover1 = int(np.flatnonzero(ts.avail_actions[1].sum(-1) > 1)[0])
            acts[1, mover1] = m1
            ts = venv.step(acts)
            total += ts.reward
            if ts.episode_done[0]:
                break
        assert ts.episode_done[0] and not ts.truncated[0]
        np.testing.assert_array_equal(ts.reward[0], [1, -1])
        np.testing.assert_array_equal(ts.episode_return[0], total[0])
        assert ts.episode_length[0] == 5
        np.testing.assert_array_equal(ts.done[0], [1, 1])
        # copy 0 restarted: empty board, player_1 to move
        assert ts.avail_actions[0, 0].all() and ts.alive[0].all()
        assert not ts.obs[0, :, :18].any()


def test_aec_agent_terminating_mid_game():
    with pettingzoo_vector_env(TurnEnv, 2, mode="sync") as venv:
        ts = venv.reset(seed=0)
        movers = []
        for t in range(1, 9):
            mover = int(np.flatnonzero(ts.avail_actions[0].sum(-1) > 1)[0])
            movers.append(mover)
            ts = venv.step(np.ones((2, 3), np.int32))
            if t == 5:  # p1 terminates on its move
                np.testing.assert_array_equal(ts.done[0], [0, 1, 0])
                np.testing.assert_array_equal(ts.alive[0], [1, 0, 1])
                np.testing.assert_array_equal(ts.reward[0], [0, 1, 0])
                assert not ts.obs[0, 1].any()
            if 5 < t < 8:
                assert not ts.alive[0, 1] and not ts.obs[0, 1].any() and ts.reward[0, 1] == 0
        assert movers == [0, 1, 2, 0, 1, 2, 0, 2]
        assert ts.episode_done.all() and ts.truncated.all()
        np.testing.assert_array_equal(ts.done[0], [1, 0, 1])
        np.testing.assert_array_equal(ts.episode_length, [8, 8])
        np.testing.assert_array_equal(ts.episode_return[0], [3, 2, 3])
        log = venv.unwrapped_envs[0].log
        assert ("p1", None) in log  # the dead step PettingZoo requires
        assert ts.alive.all() and ts.avail_actions[0, 0].all()  # restarted, p0 to move


def test_connect_four_random_games():
    rng = np.random.default_rng(0)
    with pettingzoo_vector_env(lambda: connect_four_v3.env(), 2, mode="sync") as venv:
        assert venv.spec.obs_sizes == (84, 84) and venv.spec.action_sizes == (7, 7)
        ts = venv.reset(seed=0)
        ended = 0
        for _ in range(60):
            acting = ts.avail_actions.sum(-1) > 1
            assert (acting.sum(-1) <= 1).all()
            ts = venv.step(random_actions(rng, ts))
            ended += int(ts.episode_done.sum())
            assert set(np.unique(ts.reward)) <= {-1.0, 0.0, 1.0}
        assert ended >= 1


@pytest.mark.parametrize("game", ["tic_tac_toe", "kuhn_poker"])
def test_openspiel_through_shimmy(game):
    import shimmy

    make = lambda: shimmy.OpenSpielCompatibilityV0(game_name=game)  # noqa: E731
    with pettingzoo_vector_env(make, 2, autoreset_seeding="derive") as venv:
        assert venv.spec.turn_based and venv.spec.num_agents == 2
        assert game in venv.spec.name
        runs = []
        for _ in range(2):
            rng = np.random.default_rng(1)
            ts = venv.reset(seed=4)
            steps = [ts]
            done_count = 0
            for _ in range(25):
                ts = venv.step(random_actions(rng, ts))
                steps.append(ts)
                done_count += int(ts.episode_done.sum())
                assert ((ts.avail_actions.sum(-1) > 1).sum(-1) <= 1).all()
            assert done_count >= 2
            assert (steps[-1].episode_length >= 0).all()
            runs.append(steps)
        assert_same(*runs)  # "derive" makes the shimmy chance nodes reproducible


# --- continuous actions -------------------------------------------------------------------


def test_continuous_actions():
    make = spread(continuous_actions=True)
    with pettingzoo_vector_env(make, 2, mode="sync") as venv:
        spec = venv.spec
        assert spec.action_type == "continuous" and spec.action_sizes == (5, 5, 5)
        np.testing.assert_array_equal(spec.action_low, [[0.0] * 5] * 3)
        np.testing.assert_array_equal(spec.action_high, [[1.0] * 5] * 3)
        ts = venv.reset(seed=0)
        check_layout(venv, ts)
        assert ts.avail_actions.all()
        rng = np.random.default_rng(0)
        before = ts.obs
        ts = venv.step(rng.random((2, 3, 5)))
        assert not np.array_equal(before, ts.obs)
        bad = rng.random((2, 3, 5)).astype(np.float32)
        bad[1, 2, 3] = np.nan
        with pytest.raises(ActionError, match=r"copy 1, agent 'agent_2'.*nan"):
            venv.step(bad)
        bad[1, 2, 3] = 1.5
        with pytest.raises(ActionError, match=r"copy 1, agent 'agent_2'.*1.5.*outside"):
            venv.step(bad)
        with pytest.raises(ActionError, match="shape"):
            venv.step(np.zeros((2, 3), np.float32))


def test_continuous_heterogeneous_padding_ignored():
    make = lambda: simple_speaker_listener_v4.parallel_env(max_cycles=5, continuous_actions=True)  # noqa: E731
    with pettingzoo_vector_env(make, 2) as venv:
        assert venv.spec.action_sizes == (3, 5)
        np.testing.assert_array_equal(venv.spec.action_mask()[0], [1, 1, 1, 0, 0])
        ts = venv.reset(seed=0)
        acts = np.full((2, 2, 5), 0.5, np.float32)
        acts[:, 0, 3:] = 99.0  # padding dimensions of the speaker: ignored
        ts = venv.step(acts)
        check_layout(venv, ts)


# --- action validation --------------------------------------------------------------------


def test_discrete_action_validation():
    with pettingzoo_vector_env(tag(), 2, mode="sync") as venv:
        venv.reset(seed=0)
        with pytest.raises(ActionError, match=r"shape.*\[2, 4\].*got \[2, 3\]"):
            venv.step(np.zeros((2, 3), np.int32))
        with pytest.raises(ActionError, match="integer dtype, got float"):
            venv.step(np.zeros((2, 4), np.float32))
        acts = np.zeros((2, 4), np.int32)
        acts[1, 3] = 5
        with pytest.raises(ActionError, match=r"copy 1, agent 'agent_0': action 5 is out of range"):
            venv.step(acts)
        acts[1, 3] = -1
        with pytest.raises(ActionError, match=r"copy 1, agent 'agent_0': action -1"):
            venv.step(acts)
        acts[1, 3] = 4
        venv.step(acts)  # still usable after rejected actions
        venv.step(acts.tolist())  # lists are accepted


def test_step_before_reset_and_after_close():
    venv = pettingzoo_vector_env(spread(), 2, mode="sync")
    with pytest.raises(MarlError, match="reset"):
        venv.step(np.zeros((2, 3), np.int32))
    venv.close()
    venv.close()
    with pytest.raises(MarlError, match="closed"):
        venv.reset(seed=0)


# --- worker failures and process lifetime ---------------------------------------------------


def test_worker_exception_becomes_worker_error():
    # copies 0..2 get seeds 10..12; copy 2 (worker 1 of 2) raises at its step 2
    make = lambda: LeavingEnv(crash=(12, 2, "raise"))  # noqa: E731
    venv = pettingzoo_vector_env(make, 3, num_workers=2, name="crashy")
    procs = venv.processes
    venv.reset(seed=10)
    venv.step(np.zeros((3, 3), np.int32))
    with pytest.raises(WorkerError) as info:
        venv.step(np.zeros((3, 3), np.int32))
    msg = str(info.value)
    assert "'crashy'" in msg and "copy 2" in msg and "worker 1" in msg
    assert "ValueError: boom at step 2" in msg and "Traceback" in msg
    assert venv.closed
    assert not any(p.is_alive() for p in procs)
    venv.close()  # idempotent after an error


def test_sync_exception_becomes_worker_error():
    make = lambda: LeavingEnv(crash=(11, 1, "raise"))  # noqa: E731
    with pettingzoo_vector_env(make, 2, mode="sync") as venv:
        venv.reset(seed=10)
        with pytest.raises(WorkerError, match=r"(?s)'leaving_v0'.*copy 1.*boom at step 1"):
            venv.step(np.zeros((2, 3), np.int32))


def test_worker_error_at_construction_of_copy():
    calls = []

    def make():
        calls.append(1)
        if len(calls) > 1:  # the inspection env works; the copies in the workers fail
            raise RuntimeError("cannot build")
        return LeavingEnv()

    venv = pettingzoo_vector_env(make, 2, num_workers=2)
    with pytest.raises(WorkerError, match=r"(?s)copy 0 \(worker 0\).*RuntimeError: cannot build"):
        venv.reset(seed=0)
    assert venv.closed


def test_abrupt_worker_death_is_reported_quickly():
    make = lambda: LeavingEnv(crash=(1, 2, "exit"))  # noqa: E731
    venv = pettingzoo_vector_env(make, 2, num_workers=2, name="dying")
    procs = venv.processes
    venv.reset(seed=0)
    venv.step(np.zeros((2, 3), np.int32))
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"'dying'.*worker 1 \(copies 1-1\) exit code 3"):
        venv.step(np.zeros((2, 3), np.int32))
    assert time.monotonic() - t0 < 5
    assert not any(p.is_alive() for p in procs)
    venv.close()


def test_close_releases_processes():
    with pettingzoo_vector_env(spread(), 3, num_workers=2) as venv:
        procs = venv.processes
        assert len(procs) == 2 and all(p.is_alive() for p in procs)
        venv.reset(seed=0)
    assert venv.closed
    assert not any(p.is_alive() for p in procs)
    venv.close()

    venv = pettingzoo_vector_env(spread(), 2, num_workers=2)
    procs = venv.processes
    venv.reset(seed=0)
    venv.close()
    venv.close()
    assert not any(p.is_alive() for p in procs)

    venv = pettingzoo_vector_env(spread(), 2, num_workers=2)
    procs = venv.processes
    del venv  # __del__ terminates the workers
    for p in procs:
        p.join(timeout=5)
    assert not any(p.is_alive() for p in procs)


def test_unwrapped_envs_only_in_sync_mode():
    with pettingzoo_vector_env(spread(), 2) as venv:
        with pytest.raises(MarlError, match="sync"):
            _ = venv.unwrapped_envs


def test_step_timeout_terminates_hanging_worker():
    make = lambda: LeavingEnv(crash=(0, 1, "hang"))  # noqa: E731
    venv = pettingzoo_vector_env(make, 2, num_workers=2, step_timeout=0.5)
    procs = venv.processes
    venv.reset(seed=0)
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"'leaving_v0'.*did not answer step\(\) within 0.5 s"):
        venv.step(np.zeros((2, 3), np.int32))
    assert time.monotonic() - t0 < 5
    assert not any(p.is_alive() for p in procs)


def test_bad_arguments():
    with pytest.raises(MarlError, match="num_envs"):
        pettingzoo_vector_env(spread(), 0)
    with pytest.raises(MarlError, match="mode"):
        pettingzoo_vector_env(spread(), 2, mode="threads")
    with pytest.raises(MarlError, match="aec_mode"):
        pettingzoo_vector_env(spread(), 2, aec_mode="parallel")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_no_step_lost_or_doubled_across_auto_resets(mode):
    # LeavingEnv's first feature is the step count t; episodes last 4 steps
    with pettingzoo_vector_env(LeavingEnv, 3, mode=mode, num_workers=2) as venv:
        ts = venv.reset(seed=0)
        seen, ends = [ts.obs[:, 0, 0].copy()], []
        for _ in range(9):
            ts = venv.step(np.zeros((3, 3), np.int32))
            seen.append(ts.obs[:, 0, 0].copy())
            ends.append(ts.episode_done.copy())
        np.testing.assert_array_equal(np.array(seen)[:, 0], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
        assert (np.array(seen) == np.array(seen)[:, :1]).all()
        np.testing.assert_array_equal(np.flatnonzero(np.array(ends)[:, 0]), [3, 7])
        np.testing.assert_array_equal(ts.episode_length, [0, 0, 0])
