"""Population-varying games and MRA: the padded entity layout, the resource-occupation game,
the size-agnostic relational policy with its latent, its MI estimate, training across games
(per-game logs, identical resume) and evaluation on unseen agent counts with adaptation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny import QUIET, TINY

from marl.agents.mra import LatentConfig, MRAPolicy
from marl.config import compose
from marl.envs import make, make_array_env
from marl.errors import ConfigError
from marl.evaluate import evaluate_run
from marl.policy import PolicyInput
from marl.trainer import train


def spread(agents, max_agents=None):
    return make_array_env("population/spread", agent_id=False, agents=agents, max_agents=max_agents)


def inputs(ts):
    E = ts.obs.shape[0]
    return PolicyInput(
        ts.obs[None], ts.state[None], ts.avail_actions[None], jnp.ones((1, E), bool), ts.alive[None]
    )


# ----------------------------------------------------------------------------- environments
def test_population_layout_pads_agents_and_entities():
    env = spread([2, 3], max_agents=4)
    assert env.spec.games == ("N=2", "N=3") and env.game_ids(5).tolist() == [0, 0, 0, 1, 1]
    _, ts = env.reset_batch(jax.random.PRNGKey(0), 5)
    assert ts.obs.shape == (5, 4, 47) and ts.state.shape == (5, 4 * 47)
    assert ts.alive.sum(1).tolist() == [2, 2, 2, 3, 3]
    # absent agents: zero observation, only the no-op legal
    assert not np.asarray(ts.obs[:3, 2:]).any()
    assert np.asarray(ts.avail_actions[:3, 2:, 0]).all() and not ts.avail_actions[:3, 2:, 1:].any()
    own, desc, ents, mask = env.spec.entities.split(ts.obs)
    np.testing.assert_allclose(desc[:, 0, 0], [0.2, 0.2, 0.2, 0.3, 0.3])
    # slots: 4 landmarks then 3 other agents; N=3 has 3 of each kind minus itself
    assert mask[3, 0].tolist() == [True, True, True, False, True, True, False]
    assert ents[3, 0, :3, 3].tolist() == [1, 1, 1] and ents[3, 0, 4:6, 4].tolist() == [1, 1]
    # the same numbers as the underlying mpe/simple_spread observation
    raw = make_array_env("mpe/simple_spread", agent_id=False, N=3)
    _, rts = raw.reset_batch(jax.random.split(jax.random.PRNGKey(0), 2)[1], 2)
    np.testing.assert_allclose(own[3:, :3], rts.obs[:, :, :4], atol=1e-6)
    np.testing.assert_allclose(ents[3:, :3, :3, :2], rts.obs[:, :, 4:10].reshape(2, 3, 3, 2))


def test_padded_agents_report_the_team_return():
    env = spread([2, 3], max_agents=4)
    state, ts = env.reset_batch(jax.random.PRNGKey(1), 2)
    for t in range(25):
        state, ts = env.step_batch(jax.random.PRNGKey(t), state, jnp.zeros((2, 4), jnp.int32))
    assert ts.episode_done.all()
    ret = np.asarray(ts.episode_return)
    np.testing.assert_allclose(ret[0, 2:], ret[0, :2].mean())
    np.testing.assert_allclose(ret.mean(1), [ret[0, :2].mean(), ret[1, :3].mean()], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"agents": [3, 9]}, "agents=9 is outside the family's variants (2..8)"),
        ({"agents": [3, 5], "max_agents": 4}, "max_agents=4 must be an integer of at least"),
        ({"agents": [3, 3]}, "lists a count twice"),
        ({"agents": "3"}, "agents must be a list of agent counts"),
    ],
)
def test_population_bad_input(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_array_env("population/spread", agent_id=False, **kwargs)


def test_population_needs_agent_id_off_and_array_construction():
    with pytest.raises(ConfigError, match="set env.agent_id=false"):
        make_array_env("population/spread", agent_id=True)
    with pytest.raises(ConfigError, match="make_array_env"):
        make("population/occupy")


def test_occupy_reward_counts_each_resource_once():
    env = make("occupy", N=2)
    _, s = env.reset(jax.random.PRNGKey(0))
    s = s.replace(res_pos=jnp.array([[0.5, 0.5], [-0.5, -0.5]]), res_size=jnp.array([0.1, 0.3]))
    spread_out = s.replace(pos=s.res_pos)
    # both resources held: value 0.1/0.2 + 0.3/0.2 = 2, no distance left, over N = 2
    assert float(env.team_reward(spread_out)) == pytest.approx(1.0)
    both_on_big = s.replace(pos=jnp.array([[-0.5, -0.5], [-0.5, -0.5]]))
    d = float(np.linalg.norm([1.0, 1.0]))  # the small resource's nearest agent
    assert float(env.team_reward(both_on_big)) == pytest.approx((1.5 - 0.1 * d) / 2, rel=1e-5)
    obs = env.get_obs(spread_out)["agent_0"]
    assert obs.shape == (4 + 3 * 2 + 2,)
    np.testing.assert_allclose(obs[4:10], [0, 0, 0.1, -1, -1, 0.3], atol=1e-6)


# ----------------------------------------------------------------------------- the policy
@pytest.fixture(scope="module")
def policy_and_batch():
    env = spread([3, 4, 5], max_agents=6)
    _, ts = env.reset_batch(jax.random.PRNGKey(2), 6)
    pol = MRAPolicy(env.spec, latent=LatentConfig(num=4), dim=32, hidden=(32,))
    return env, pol, pol.init(jax.random.PRNGKey(3)), ts


def test_outputs_ignore_the_order_of_other_entities(policy_and_batch):
    env, pol, params, ts = policy_and_batch
    lay = env.spec.entities
    own, desc, ents, mask = lay.split(ts.obs)
    # copy 5 plays N=5: permute its landmarks and its other agents (within each kind)
    perm = np.arange(lay.max_entities)
    perm[:5] = [3, 0, 4, 1, 2]
    perm[6:10] = [8, 6, 9, 7]
    obs2 = jnp.concatenate(
        [own, desc, ents[:, :, perm].reshape(*ents.shape[:2], -1), mask[:, :, perm]], -1
    )
    ts2 = ts._replace(obs=obs2)
    key = jax.random.PRNGKey(4)
    h = pol.initial_hidden(6)
    a = pol.act(params, h, inputs(ts), key, greedy=True)
    b = pol.act(params, h, inputs(ts2), key, greedy=True)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    assert not np.allclose(ts.obs, ts2.obs)  # the permutation did change the input


def test_the_same_parameters_run_on_every_agent_count(policy_and_batch):
    _, pol, params, _ = policy_and_batch  # initialised for max_agents = 6
    z0 = None
    values = {}
    for pad in (4, 8):  # games N=2 and N=4 padded to 4 or to 8 agents: the same episodes
        env = spread([2, 4], max_agents=pad)
        _, ts = env.reset_batch(jax.random.PRNGKey(6), 2)
        other = MRAPolicy(env.spec, latent=LatentConfig(num=4), dim=32, hidden=(32,))
        _, rel = other.features(params, ts.obs)
        z0 = jax.nn.one_hot(jnp.zeros(ts.obs.shape[:2], int), 4)
        values[pad] = other.critic.apply(params["critic"], other._embed(rel, z0))[..., 0]
    # the padding does not change what the agents that exist get
    np.testing.assert_allclose(values[4][0, :2], values[8][0, :2], atol=1e-5)
    np.testing.assert_allclose(values[4][1], values[8][1, :4], atol=1e-5)
    env = spread([7, 8], max_agents=8)  # counts the parameters never saw
    _, ts = env.reset_batch(jax.random.PRNGKey(7), 2)
    other = MRAPolicy(env.spec, latent=LatentConfig(num=4), dim=32, hidden=(32,))
    _, a, logp, v = other.act(params, other.initial_hidden(2), inputs(ts), jax.random.PRNGKey(8))
    assert a.shape == (1, 2, 8) and np.isfinite(logp).all() and np.isfinite(v).all()


def test_the_latent_changes_the_relation_weights(policy_and_batch):
    _, pol, params, ts = policy_and_batch
    w = [
        pol.relation_weights(params, ts.obs, jax.nn.one_hot(jnp.full(ts.obs.shape[:2], z), 4))
        for z in range(2)
    ]
    present = np.asarray(pol.layout.split(ts.obs)[3])
    assert np.abs(np.asarray(w[0] - w[1])).max() > 1e-3
    np.testing.assert_allclose(np.asarray(w[0]).sum(-1)[ts.alive], 1.0, atol=1e-5)
    assert not np.asarray(w[0])[~present].any()  # absent entities get no weight


def _mi(pol, params, ts, key):
    h = pol.initial_hidden(ts.obs.shape[0])
    (z, _), actions, _, _ = pol.act(params, h, inputs(ts), key)
    _, rel = pol.features(params, ts.obs)
    lz = pol.prior_logits(params, pol.layout.split(ts.obs)[1])
    mi = pol.mutual_information(params, rel, lz, z, ts.avail_actions, actions[0])
    return float((mi * ts.alive).sum() / ts.alive.sum())


def test_mi_is_higher_when_the_policy_depends_on_the_latent(policy_and_batch):
    env, pol, params, _ = policy_and_batch
    _, ts = env.reset_batch(jax.random.PRNGKey(7), 60)
    # sharper graphs and logits than at initialisation (near-uniform attention), so that the
    # heads differ as a trained policy's do
    params = jax.tree.map(lambda x: x, params)
    out = params["actor"]["params"]["Dense_1"]
    out["kernel"] = 20.0 * jax.random.normal(jax.random.PRNGKey(9), out["kernel"].shape)
    q = params["relation"]["params"]["query"]
    q["kernel"] *= 30.0
    dep = np.mean([_mi(pol, params, ts, jax.random.PRNGKey(k)) for k in range(4)])
    # every head the same query: the policy ignores z
    tied = {
        "kernel": jnp.broadcast_to(q["kernel"][:, :1], q["kernel"].shape),
        "bias": jnp.broadcast_to(q["bias"][:1], q["bias"].shape),
    }
    same = {**params, "relation": {"params": {**params["relation"]["params"], "query": tied}}}
    indep = np.mean([_mi(pol, same, ts, jax.random.PRNGKey(k)) for k in range(4)])
    assert abs(indep) < 1e-5 and dep > 0.04  # 0.072 here


def _grad_norms(grads):
    return {k: float(optax.tree.norm(v)) for k, v in grads.items()}


def test_gradients_reach_the_right_parameter_groups(policy_and_batch):
    """The MI term trains the relation network only; through the straight-through sample the
    policy's log-probability reaches the prior, while the value does not."""
    _, pol, params, ts = policy_and_batch
    h = pol.initial_hidden(ts.obs.shape[0])
    (z, noise), actions, _, _ = pol.act(params, h, inputs(ts), jax.random.PRNGKey(11))
    hid = (z[None], noise[None])

    def mi(p):
        _, rel = pol.features(p, ts.obs)
        lz = pol.prior_logits(p, pol.layout.split(ts.obs)[1])
        return pol.mutual_information(p, rel, lz, z, ts.avail_actions, actions[0]).sum()

    g = _grad_norms(jax.grad(mi)(params))
    assert g["relation"] > 0 and all(g[k] == 0 for k in ("actor", "critic", "prior", "classifier"))
    logp = _grad_norms(
        jax.grad(lambda p: pol.evaluate(p, hid, inputs(ts), actions)[0].sum())(params)
    )
    value = _grad_norms(
        jax.grad(lambda p: pol.evaluate(p, hid, inputs(ts), actions)[2].sum())(params)
    )
    assert logp["prior"] > 0 and value["prior"] == 0 and value["critic"] > 0


def test_mra_needs_an_entity_layout(tmp_path, capsys):
    from marl.cli import main

    spec = make_array_env("mpe/simple_spread").spec
    with pytest.raises(ConfigError, match="algo=mra needs an environment whose observations"):
        MRAPolicy(spec)
    assert main(["train", "algo=mra", f"logger.root={tmp_path}", *QUIET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "algo=mra needs an environment" in err[0]
    assert not list(tmp_path.rglob("config.yaml")) and not list((tmp_path).glob("*/*"))


# ----------------------------------------------------------------------------- training
MRA_TINY = [
    "env=population/spread",
    "env.kwargs.agents=[2,3]",
    "env.kwargs.max_agents=3",
    "algo=mra",
    "algo.latent.num=3",
    "algo.network.embed_dim=16",
    "algo.network.hidden=[16]",
]


def tiny_mra(tmp_path, *extra):
    return compose([*TINY, *QUIET, *MRA_TINY, f"logger.root={tmp_path}", *extra])


def rows(run, name):
    out = [json.loads(line) for line in (run / name).read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in out]


@pytest.fixture(scope="module")
def mra_run(tmp_path_factory):
    return train(tiny_mra(tmp_path_factory.mktemp("mra")))


def test_training_across_games_logs_each_game(mra_run):
    m = rows(mra_run, "metrics.jsonl")
    assert len(m) == 16
    assert all(np.isfinite(r["mra/mi"]) and 0 <= r["mra/classifier_acc"] <= 1 for r in m)
    assert any(r["train/N=3/episode_return"] is not None for r in m)
    ev = rows(mra_run, "eval.jsonl")
    for r in ev:  # 4 episodes: 2 per game, and the two means make the overall one
        per = [r["eval/N=2/episode_return"], r["eval/N=3/episode_return"]]
        assert r["eval/episode_return"] == pytest.approx(np.mean(per), rel=1e-5)
        assert "mra/prior_entropy" in r
    final = json.loads((mra_run / "final.json").read_text())
    for row in (final["final"][0], final["absolute"][0]):
        assert {"eval/N=2/episode_return", "eval/N=3/episode_return"} <= set(row)


def test_training_across_games_resumes_identically(mra_run, tmp_path):
    part = train(tiny_mra(tmp_path), stop_after_chunks=2)
    resumed = train(compose([f"resume={part}"]))
    assert rows(resumed, "metrics.jsonl") == rows(mra_run, "metrics.jsonl")
    assert rows(resumed, "eval.jsonl") == rows(mra_run, "eval.jsonl")


def test_evaluate_unseen_counts_zero_shot_and_adapted(mra_run):
    over = ["env.kwargs.agents=[4,5]", "env.kwargs.max_agents=5"]
    res = evaluate_run(mra_run, episodes=4, env_overrides=over, adapt={"adapt": "select"})
    assert set(res["games"]) == {"N=4", "N=5"} and res["env"] == "population/spread"
    ad = res["adapted"]
    assert ad["method"] == "select" and len(ad["history"]) == 3  # every latent tried
    assert set(ad["games"]) == {"N=4", "N=5"}
    best = np.max([h["return"] for h in ad["history"]], 0)
    assert np.all(np.isfinite(best))
    pg = evaluate_run(
        mra_run, episodes=4, env_overrides=over, adapt={"adapt_steps": 2, "adapt_lr": 5.0}
    )
    assert pg["adapted"]["method"] == "pg" and len(pg["adapted"]["history"]) == 2
    # the same evaluation episodes: zero-shot numbers are reproducible
    assert pg["games"] == res["games"]


def test_adaptation_needs_a_latent_policy_and_valid_options(mra_run):
    from marl.evaluate import split_adapt

    assert split_adapt(["env.kwargs.agents=[4]", "adapt_steps=3", "adapt=select"]) == (
        ["env.kwargs.agents=[4]"],
        {"adapt_steps": 3, "adapt": "select"},
    )
    with pytest.raises(ConfigError, match="adapt_steps='many' is not an integer"):
        split_adapt(["adapt_steps=many"])
    with pytest.raises(ConfigError, match="adapt method must be pg or select"):
        evaluate_run(mra_run, episodes=2, adapt={"adapt": "sgd"})
    with pytest.raises(ConfigError, match="takes env overrides only"):
        evaluate_run(mra_run, env_overrides=["envs.kwargs.agents=[4]"])
    with pytest.raises(ConfigError, match="episodes=1: population/spread plays 2 games"):
        evaluate_run(mra_run, episodes=1)
