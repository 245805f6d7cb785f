"""Adversarial attacks: the attack environment around a frozen team, AMI's victim model,
influence term and oracle, the attack commands end to end (black-box: the victims' run is
untouched) and the errors of a bad victim run."""

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
from marl.agents.ami import AMIPolicy
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
    env = make_attack_env(victims=str(victims), slot=1)
    base, L = env.base, env.spec.attack
    assert env.spec.num_agents == 1 and L.num_agents == 3 and L.slot == 1
    assert env.spec.obs_dim == base.spec.obs_dim and env.spec.state_dim == L.state_dim
    state, ts = env.reset_batch(jax.random.PRNGKey(0), 6)
    rewards = []
    for t in range(12):
        prev = state
        a = jnp.full((6, 1), 1, jnp.int32)  # legal at every step of these marines (no-op)
        state, ts = env.step_batch(jax.random.PRNGKey(t), state, a)
        s, acts, avail, vis = L.split(ts.state)
        np.testing.assert_array_equal(s, state.ts.state)
        # victims' actions (one-hot, the adversary's row zero) are the ones played next
        np.testing.assert_array_equal(np.argmax(acts[:, [0, 2]], -1), state.actions[:, [0, 2]])
        assert not np.asarray(acts[:, 1]).any() and np.allclose(acts[:, [0, 2]].sum(-1), 1)
        np.testing.assert_array_equal(avail, state.ts.avail_actions)
        assert not np.asarray(vis[:, 1]).any() and set(np.unique(vis)) <= {0.0, 1.0}
        # the adversary's slot played its action; the reward is minus the victims' mean
        np.testing.assert_array_equal(np.asarray(ts.obs[:, 0]), np.asarray(state.ts.obs[:, 1]))
        np.testing.assert_allclose(
            ts.reward[:, 0], -(state.ts.reward[:, 0] + state.ts.reward[:, 2]) / 2, rtol=1e-6
        )
        assert prev.actions.shape == (6, 3)
        rewards.append(np.asarray(ts.reward))
    assert np.abs(np.concatenate(rewards)).sum() > 0


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


def _ami(**kw) -> AMIPolicy:
    cfg = compose(["algo=ami", *(f"algo.influence.{k}={v}" for k, v in kw.items())])
    return make_policy(cfg.algo, SPEC, 100)


def _scripted_rollout(key, follow: bool, T=32, E=16):
    """Victims' next action = the adversary's action (``follow``) or a function of the
    state alone; every action legal, every victim visible."""
    k_s, k_a, k_v = jax.random.split(key, 3)
    s = jax.random.normal(k_s, (T + 1, E, S_DIM))
    adv = jax.random.randint(k_a, (T + 1, E), 0, N_ACT)
    if follow:
        nxt = jnp.broadcast_to(adv[:, :, None], (T + 1, E, A))
    else:
        nxt = jnp.broadcast_to((s[..., :1] > 0).astype(jnp.int32) * 2, (T + 1, E, A))
    # nxt[t]: the victims' actions at t + 1, so their actions at t are nxt[t - 1]
    acts = jnp.concatenate([nxt[:1], nxt[:-1]], 0)
    onehot = jax.nn.one_hot(acts, N_ACT).at[:, :, 0].set(0.0)
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
        adv[:T, :, None],
        jnp.zeros((T, E, 1)),
        jnp.zeros((T, E, 1)),
        jnp.zeros((T, E, 1)),
        jnp.zeros((T, E), bool),
    )
    return traj, inp(slice(T, T + 1))


def _fit(policy, follow: bool, updates=60):
    key = jax.random.PRNGKey(0)
    params = policy.init(key)
    aux = policy.init_aux(key)
    prepare = jax.jit(policy.prepare)
    accs = []
    for u in range(updates):
        traj, last = _scripted_rollout(jax.random.PRNGKey(100 + u), follow)
        aux, reward, m = prepare(params, aux, traj, last, jax.random.PRNGKey(u))
        accs.append(float(m["ami/model_acc"]))
    return params, aux, accs


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
            k = aux["model"]["params"]["Dense_0"]["kernel"]
            rows = slice(S_DIM + LAYOUT.slot * N_ACT, S_DIM + (LAYOUT.slot + 1) * N_ACT)
            blind = jax.tree.map(lambda x: x, aux)
            blind["model"]["params"]["Dense_0"]["kernel"] = k.at[rows].set(0.0)
            S0 = policy.influence(params, blind, traj, b, None, jax.random.PRNGKey(3))
            assert float(jnp.abs(S0).max()) == 0.0
    # learned from a team that ignores the adversary: near zero (argmax flips only where the
    # state feature is near its threshold); two victims following a near-uniform adversary
    # over 4 actions: each prediction moves by about 2 (1 - 1/4) in L1
    assert out[False] < 0.05
    assert out[True] > 1.5


def test_oracle_targets_are_legal():
    policy = _ami()
    aux = policy.init_aux(jax.random.PRNGKey(1))
    key = jax.random.PRNGKey(2)
    s = jax.random.normal(key, (64, 8, S_DIM))
    joint = jax.nn.one_hot(jax.random.randint(key, (64, 8, A), 0, N_ACT), N_ACT)
    avail = jax.random.bernoulli(jax.random.PRNGKey(3), 0.3, (64, 8, A, N_ACT))
    avail = avail.at[..., 1].set(True)  # at least one legal action each
    logits = policy.oracle_logits(aux["oracle"], s, joint, avail)
    tau = jax.random.categorical(jax.random.PRNGKey(4), logits)
    assert np.take_along_axis(np.asarray(avail), np.asarray(tau)[..., None], -1).all()
    assert len(np.unique(np.asarray(tau))) == N_ACT  # not a constant


def test_shaped_reward_and_untouched_params():
    """The shaped reward is minus the distance to the oracle's targets, standardised; the
    adversary's parameters are not changed by prepare (the PPO epochs do that)."""
    policy = _ami(standardise="false", coef=1.0)
    key = jax.random.PRNGKey(0)
    params, aux = policy.init(key), policy.init_aux(key)
    traj, last = _scripted_rollout(key, True)
    traj = traj._replace(reward=jnp.full(traj.reward.shape, 0.5))
    _, reward, m = policy.prepare(params, aux, traj, last, key)
    infl = float(m["ami/influence"])
    assert 0 < infl <= 4.0  # two victims, L1 distances of at most 2
    np.testing.assert_allclose(float(reward.mean()), 0.5 - infl, rtol=1e-5)
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
    runs = [run_attack([*common, f"attack={a}"]) for a in ("none", "ami")]
    for run in runs:
        meta = json.loads((run / "attack.json").read_text())
        ev = json.loads((run / "attack_eval.json").read_text())
        assert meta["victims"] == str(Path(victims).resolve())
        assert np.asarray(ev["team_return"]).shape == (1, 8)  # 4 episodes x factor 2
        assert set(np.unique(ev["won"])) <= {0.0, 1.0}
    rows = [json.loads(x) for x in (runs[1] / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(np.isfinite(r["ami/influence"]) for r in rows)
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
    assert "checkpoint" in fails(f"victims={bad}")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("attack.json"))
