"""Adversarial attacks: the attack environment around a frozen team, AMI's victim model,
influence term and oracle, the attack commands end to end (black-box: the victims' run is
untouched) and the errors of a bad victim run."""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import QUIET, TINY

from marl.agents import make_policy
from marl.agents.ami import AMIPolicy, RewardStats
from marl.attack import attack_eval, load_victims, make_attack_env, run_attack
from marl.cli import main
from marl.config import compose
from marl.envs.core import AttackLayout, EnvSpec
from marl.policy import PolicyInput
from marl.ppo import Transition
from marl.trainer import train

SMALL = ["env=smax/marines", "env.kwargs.N=3", "env.kwargs.M=2"]
# the attacker's training: the tiny config's size
ATTACK = [o for o in TINY if not o.startswith("checkpoint")] + ["logger.wandb.mode=disabled"]


@pytest.fixture(scope="module")
def victims(tmp_path_factory):
    """A tiny MAPPO team on 3 marines vs 2 (one extra ally)."""
    root = tmp_path_factory.mktemp("victims")
    cfg = compose([*SMALL, "algo=mappo", *TINY, *QUIET, f"logger.root={root}"])
    return train(cfg)


def _digest(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run / "checkpoints").rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------- environment
def test_attack_env_view_of_the_team(victims):
    base_env = None
    for mode in ("adversary", "clean", "random"):
        env = make_attack_env(victims=str(victims), slot=1, mode=mode)
        base, L = env.base, env.spec.attack
        base_env = base_env or base
        assert env.spec.num_agents == 1 and L.num_agents == 3 and L.slot == 1
        assert env.spec.obs_dim == base.spec.obs_dim and env.spec.state_dim == L.state_dim
        state, ts = env.reset_batch(jax.random.PRNGKey(0), 6)
        rewards = []
        for t in range(12):
            prev, key = state, jax.random.PRNGKey(t)
            a = base.random_actions(jax.random.PRNGKey(100 + t), ts.avail_actions)  # [6, 1]
            state, ts = env.step_batch(key, state, a)
            # the slot played: the adversary's action, the team's own, or a random one
            k_rand, k_env, _ = jax.random.split(key, 3)
            played = {
                "adversary": a[:, 0],
                "clean": prev.actions[:, 1],
                "random": base.random_actions(k_rand, prev.ts.avail_actions[:, 1:2])[:, 0],
            }[mode]
            _, expect = base.step_batch(k_env, prev.base, prev.actions.at[:, 1].set(played))
            np.testing.assert_array_equal(state.ts.state, expect.state)
            s, acts, avail, vis = L.split(ts.state)
            np.testing.assert_array_equal(s, state.ts.state)
            # victims' actions (one-hot, the adversary's row zero) are the ones played next
            np.testing.assert_array_equal(np.argmax(acts[:, [0, 2]], -1), state.actions[:, [0, 2]])
            assert not np.asarray(acts[:, 1]).any() and np.allclose(acts[:, [0, 2]].sum(-1), 1)
            np.testing.assert_array_equal(avail, state.ts.avail_actions)
            assert not np.asarray(vis[:, 1]).any() and set(np.unique(vis)) <= {0.0, 1.0}
            # the slot's observation; the reward is minus the victims' mean
            np.testing.assert_array_equal(np.asarray(ts.obs[:, 0]), np.asarray(state.ts.obs[:, 1]))
            np.testing.assert_allclose(
                ts.reward[:, 0], -(state.ts.reward[:, 0] + state.ts.reward[:, 2]) / 2, rtol=1e-6
            )
            rewards.append(np.asarray(ts.reward))
        assert np.abs(np.concatenate(rewards)).sum() > 0


def test_attack_env_continuous_team():
    """A continuous-action team (MPE spread, an untrained MAPPO policy as the victims): the
    state carries the victims' action vectors within the bounds; random plays in bounds."""
    from marl.attack import AttackEnv, VictimTeam
    from marl.envs import make_array_env

    base = make_array_env("mpe/simple_spread", N=3, continuous=True)
    cfg = compose(["algo=mappo", "env=mpe/simple_spread"])
    policy = make_policy(cfg.algo, base.spec, 10)
    team = VictimTeam(policy, policy.init(jax.random.PRNGKey(0)))
    for mode in ("adversary", "random"):
        env = AttackEnv(base, team, slot=2, mode=mode)
        L = env.spec.attack
        assert env.spec.action_type == "continuous" and L.continuous
        state, ts = env.reset_batch(jax.random.PRNGKey(1), 4)
        for t in range(5):
            a = jnp.full((4, 1, L.num_actions), 5.0)  # out of bounds: clipped when played
            prev = state
            state, ts = env.step_batch(jax.random.PRNGKey(t), state, a)
            _, acts, avail, vis = L.split(ts.state)
            low, high = np.asarray(base.spec.action_low), np.asarray(base.spec.action_high)
            np.testing.assert_allclose(
                acts[:, :2], np.clip(state.actions[:, :2], low[:2], high[:2])
            )
            assert not np.asarray(acts[:, 2]).any() and np.asarray(avail).all()
            assert np.asarray(vis[:, :2]).all() and not np.asarray(vis[:, 2]).any()
            np.testing.assert_allclose(
                ts.reward[:, 0], -(state.ts.reward[:, 0] + state.ts.reward[:, 1]) / 2, rtol=1e-5
            )
            assert prev.actions.shape == (4, 3, L.num_actions)
        r = env.random_actions(jax.random.PRNGKey(9), ts.avail_actions)
        assert r.shape == (4, 1, L.num_actions)
        assert (np.asarray(r) >= low[2]).all() and (np.asarray(r) <= high[2]).all()


# ----------------------------------------------------------------------------- AMI learners
A, N_ACT, S_DIM = 3, 4, 5
LAYOUT = AttackLayout(S_DIM, A, N_ACT, slot=0)
SPEC = EnvSpec(
    name="synthetic",
    agents=("adv",),
    obs_sizes=(6,),
    agent_id=False,
    action_type="discrete",
    action_sizes=(N_ACT,),
    state_dim=LAYOUT.state_dim,
    state_source="env",
    attack=LAYOUT,
)


C_LAYOUT = AttackLayout(S_DIM, A, N_ACT, slot=0, continuous=True)
C_SPEC = dataclasses.replace(
    SPEC,
    action_type="continuous",
    action_low=((-1.0,) * N_ACT,),
    action_high=((1.0,) * N_ACT,),
    attack=C_LAYOUT,
)


def _ami(continuous=False, **kw) -> AMIPolicy:
    cfg = compose(["algo=ami", *(f"algo.influence.{k}={v}" for k, v in kw.items())])
    return make_policy(cfg.algo, C_SPEC if continuous else SPEC, 100)


def _scripted_rollout(key, follow: bool, T=32, E=16, continuous=False):
    """Victims' next action = the adversary's action (``follow``) or a function of the
    state alone; every action legal, every victim visible."""
    k_s, k_a, k_v = jax.random.split(key, 3)
    s = jax.random.normal(k_s, (T + 1, E, S_DIM))
    if continuous:
        adv = jax.random.uniform(k_a, (T + 1, E, N_ACT), minval=-1, maxval=1)
        own = jnp.where(s[..., :1] > 0, 0.5, -0.5) * jnp.ones(N_ACT)
        nxt = jnp.broadcast_to((adv if follow else own)[:, :, None], (T + 1, E, A, N_ACT))
    else:
        adv = jax.random.randint(k_a, (T + 1, E), 0, N_ACT)
        own = (s[..., :1] > 0).astype(jnp.int32) * 2
        nxt = jnp.broadcast_to(adv[:, :, None] if follow else own, (T + 1, E, A))
    # nxt[t]: the victims' actions at t + 1, so their actions at t are nxt[t - 1]
    acts = jnp.concatenate([nxt[:1], nxt[:-1]], 0)
    onehot = acts if continuous else jax.nn.one_hot(acts, N_ACT)
    onehot = onehot.at[:, :, 0].set(0.0)
    avail = jnp.ones((T + 1, E, A, N_ACT))
    vis = jnp.ones((T + 1, E, A)).at[:, :, 0].set(0.0)
    state = jnp.concatenate([s, onehot.reshape(T + 1, E, -1), avail.reshape(T + 1, E, -1), vis], -1)
    obs = jax.random.normal(k_v, (T + 1, E, 1, 6))

    def inp(sl):
        return PolicyInput(
            obs[sl],
            state[sl],
            jnp.ones((*obs[sl].shape[:3], N_ACT), bool),
            jnp.zeros(obs[sl].shape[:2], bool),
            jnp.ones(obs[sl].shape[:3], bool),
        )

    traj = Transition(
        inp(slice(0, T)),
        adv[:T, :, None],  # [T, E, 1] or [T, E, 1, nA]
        jnp.zeros((T, E, 1)),
        jnp.zeros((T, E, 1)),
        jnp.zeros((T, E, 1)),
        jnp.zeros((T, E), bool),
    )
    return traj, inp(slice(T, T + 1))


def _fit(policy, follow: bool, updates=60, continuous=False):
    key = jax.random.PRNGKey(0)
    params = policy.init(key)
    aux = policy.init_aux(key)
    prepare = jax.jit(policy.prepare)
    fits = []
    for u in range(updates):
        traj, last = _scripted_rollout(jax.random.PRNGKey(100 + u), follow, continuous=continuous)
        aux, reward, m = prepare(params, aux, traj, last, jax.random.PRNGKey(u))
        fits.append(float(m["ami/model_mae" if continuous else "ami/model_acc"]))
    return params, aux, fits


def test_victim_model_learns_a_scripted_team():
    policy = _ami(target="none")
    _, _, accs = _fit(policy, follow=True)
    # accuracy on each new rollout before training on it: chance (1/4) at first, then learned
    assert accs[0] < 0.45 and min(accs[-5:]) > 0.95


def test_influence_zero_when_ignored_and_grows_when_followed():
    policy = _ami(target="none")
    out = {}
    for follow in (False, True):
        params, aux, _ = _fit(policy, follow)
        traj, last = _scripted_rollout(jax.random.PRNGKey(7), follow)
        b = policy._batch(traj, last)
        S = policy.influence(params, aux, traj, b, None, jax.random.PRNGKey(3))
        out[follow] = float(S.mean())
        if not follow:
            # a victim model blind to the adversary's action: exactly no influence
            k = aux["model"]["params"]["MLP_0"]["Dense_0"]["kernel"]
            rows = slice(S_DIM + LAYOUT.slot * N_ACT, S_DIM + (LAYOUT.slot + 1) * N_ACT)
            blind = jax.tree.map(lambda x: x, aux)
            blind["model"]["params"]["MLP_0"]["Dense_0"]["kernel"] = k.at[rows].set(0.0)
            S0 = policy.influence(params, blind, traj, b, None, jax.random.PRNGKey(3))
            assert float(jnp.abs(S0).max()) == 0.0
    # learned from a team that ignores the adversary: near zero (argmax flips only where the
    # state feature is near its threshold); two victims following a near-uniform adversary
    # over 4 actions: each prediction moves by about 2 (1 - 1/4) in L1
    assert out[False] < 0.05
    assert out[True] > 1.5


def test_continuous_victim_model_and_density_influence():
    """The Gaussian form: the victim model learns a team that copies the adversary's action
    vector (mean absolute error falls); the untargeted influence is zero for a team that
    ignores it and grows when it follows; the targeted influence is a density, raised."""
    policy = _ami(continuous=True, target="none")
    assert policy.coef == 1.0  # the reference's weight for continuous actions
    out = {}
    for follow in (False, True):
        params, aux, maes = _fit(policy, follow, continuous=True)
        assert maes[-1] < 0.5 * maes[0]
        traj, last = _scripted_rollout(jax.random.PRNGKey(7), follow, continuous=True)
        b = policy._batch(traj, last)
        out[follow] = float(
            policy.influence(params, aux, traj, b, None, jax.random.PRNGKey(3)).mean()
        )
    assert out[False] < 0.1 * out[True] and out[True] > 0.3
    targeted = _ami(continuous=True, standardise="false")
    key = jax.random.PRNGKey(0)
    traj, last = _scripted_rollout(key, True, continuous=True)
    _, reward, m = targeted.prepare(targeted.init(key), targeted.init_aux(key), traj, last, key)
    assert float(m["ami/influence"]) > 0  # densities: positive, added to the reward
    np.testing.assert_allclose(float(reward.mean()), float(m["ami/influence"]), rtol=1e-5)


def test_oracle_targets_are_legal():
    policy = _ami()
    aux = policy.init_aux(jax.random.PRNGKey(1))
    key = jax.random.PRNGKey(2)
    s = jax.random.normal(key, (64, 8, S_DIM))
    joint = jax.nn.one_hot(jax.random.randint(key, (64, 8, A), 0, N_ACT), N_ACT)
    avail = jax.random.bernoulli(jax.random.PRNGKey(3), 0.3, (64, 8, A, N_ACT))
    avail = avail.at[..., 1].set(True)  # at least one legal action each
    logits = policy.oracle_out(aux["oracle"], s, joint, avail)
    tau = jax.random.categorical(jax.random.PRNGKey(4), logits)
    assert np.take_along_axis(np.asarray(avail), np.asarray(tau)[..., None], -1).all()
    assert len(np.unique(np.asarray(tau))) == N_ACT  # not a constant


def test_shaped_reward_episode_ends_and_reward_statistics():
    """Unstandardised, the shaped reward is the team reward minus the distance to the
    oracle's targets; a step that ends an episode has nothing to predict; the running
    statistics are those of all rewards seen."""
    policy = _ami(standardise="false", coef=1.0)
    key = jax.random.PRNGKey(0)
    params, aux = policy.init(key), policy.init_aux(key)
    traj, last = _scripted_rollout(key, True)
    done = jnp.zeros_like(traj.done).at[5, :4].set(True)
    traj = traj._replace(reward=jnp.full(traj.reward.shape, 0.5), done=done)
    _, reward, m = policy.prepare(params, aux, traj, last, key)
    infl = float(m["ami/influence"])
    assert 0 < infl <= 4.0  # two victims, L1 distances of at most 2
    S = policy.influence(
        params, aux, traj, policy._batch(traj, last), jnp.zeros((32, 16, 3), int), key
    )
    assert not np.asarray(S[5, :4]).any() and np.asarray(S[5, 4:]).all()
    b = policy._batch(traj, last)
    assert not np.asarray(b["mask"][5, :4]).any() and np.asarray(b["mask"][5, 4:, 1:]).all()
    assert not np.asarray(b["mask"][..., 0]).any()  # the adversary is not a victim
    _, acts_next, _, _ = LAYOUT.split(traj.inp.state[6])
    np.testing.assert_array_equal(b["next"][5], np.argmax(acts_next, -1))
    assert 0.5 - 4.0 <= float(reward.min()) and float(reward.max()) <= 0.5
    # standardised: minus the running mean (the reference) or scaled only; same spread
    out = {}
    for centre in ("true", "false"):
        p = _ami(coef=1.0, standardise_mean=centre)
        out[centre] = np.asarray(p.prepare(params, aux, traj, last, key)[1])
    shift = out["false"] - out["true"]
    assert abs(float(out["true"].mean())) < 0.01 and float(shift.mean()) < -0.5
    np.testing.assert_allclose(shift, shift.mean(), atol=1e-4)
    stats = RewardStats.create()
    xs = [np.random.default_rng(i).normal(i, 1 + i, (7, 3)).astype(np.float32) for i in range(3)]
    for x in xs:
        stats = RewardStats.update(stats, jnp.asarray(x))
    allx = np.concatenate([x.ravel() for x in xs])
    np.testing.assert_allclose(float(stats["mean"]), allx.mean(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(stats["var"]), allx.var(), rtol=1e-3)
    with pytest.raises(Exception, match="attacks a trained team"):
        make_policy(compose(["algo=ami"]).algo, _plain_spec(), 10)


def _plain_spec():
    return EnvSpec("x", ("a", "b"), (3, 3), False, "discrete", (2, 2), 6, "concat_obs")


# ----------------------------------------------------------------------------- end to end
def test_attacks_end_to_end_leave_the_victims_untouched(victims, tmp_path):
    before = _digest(victims)
    _, _, team = load_victims(victims)
    params_before = jax.tree.map(np.asarray, team._VictimTeam__params)
    common = [f"victims={victims}", *ATTACK, f"logger.root={tmp_path}"]
    # two seeds for AMI: its learners are initialised seed by seed (vmapped, XLA:CPU hangs)
    runs = [
        run_attack([*common, f"attack={a}", f"num_seeds={2 if a == 'ami' else 1}"])
        for a in ("none", "ami", "random")
    ]
    for run in runs:
        meta = json.loads((run / "attack.json").read_text())
        ev = json.loads((run / "attack_eval.json").read_text())
        assert meta["victims"] == str(Path(victims).resolve())
        seeds = 2 if meta["attack"] == "ami" else 1
        assert np.asarray(ev["team_return"]).shape == (seeds, 8)  # 4 episodes x factor 2
        assert set(np.unique(ev["won"])) <= {0.0, 1.0}
    rows = [json.loads(x) for x in (runs[1] / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 32 and all(np.isfinite(r["ami/influence"]) for r in rows)
    assert {"ami/model_acc", "ami/oracle_loss", "ami/reward_shaped"} <= set(rows[0])
    cfg = (runs[1] / "config.yaml").read_text()
    assert "job_type: attack" in cfg and "name: attack" in cfg
    # black-box: the victims' run and parameters are bit-identical after the attacks
    assert _digest(victims) == before
    _, _, after = load_victims(victims)
    for x, y in zip(
        jax.tree.leaves(params_before),
        jax.tree.leaves(after._VictimTeam__params),
        strict=True,
    ):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    # resuming a finished attack re-evaluates it: the same episodes, the same numbers
    first = json.loads((runs[1] / "attack_eval.json").read_text())["team_return"]
    assert run_attack([f"resume={runs[1]}"]) == runs[1]
    assert json.loads((runs[1] / "attack_eval.json").read_text())["team_return"] == first
    report = attack_eval(runs, tmp_path / "report", wandb_mode="disabled")
    by = {r["attack"]: r for r in report["rows"]}
    assert by["none"]["team_return_drop"] == 0.0
    ami = by["ami"]
    assert ami["win_rate_low"] <= ami["win_rate"] <= ami["win_rate_high"]
    np.testing.assert_allclose(
        ami["team_return_drop"], by["none"]["team_return"] - ami["team_return"]
    )
    for name in ("attack_report.json", "attack_report.md", "attack_report.png"):
        assert (tmp_path / "report" / name).is_file()


def test_bad_victim_runs_fail_with_one_line(victims, tmp_path, capsys):
    def fails(*overrides) -> str:
        code = main(["attack", *overrides, *ATTACK, f"logger.root={tmp_path / 'out'}"])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert len(err.splitlines()) == 1, err
        return err

    assert "no such run directory" in fails(f"victims={tmp_path / 'missing'}")
    assert "were trained on smax/marines, not mpe/simple_spread" in fails(
        f"victims={victims}", "env=mpe/simple_spread"
    )
    assert "team of 3 agents; the attack asks for 4" in fails(
        f"victims={victims}", "env=smax/marines", "env.kwargs.N=4"
    )
    assert "adversary_slot=5" in fails(f"victims={victims}", "adversary_slot=5")
    assert "attack" in fails(f"victims={victims}", "attack=nope")
    # a corrupt checkpoint: every saved step garbled
    bad = tmp_path / "corrupt"
    shutil.copytree(victims, bad)
    for p in (bad / "checkpoints").rglob("*"):
        if p.is_file() and p.stat().st_size > 0:
            p.write_bytes(b"garbage")
    assert "is corrupt" in fails(f"victims={bad}")
    # no run directory left behind by a refused attack
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.*"))
