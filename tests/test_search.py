"""MD / MMD search: the update, update equivalence on Kuhn poker, OpenSpiel anchors, tiny
Hanabi, the Hanabi belief and ``marl search``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marl.agents.search import (
    JaxSearch,
    SearchConfig,
    mmd_log_policy,
    tabular_blueprint,
    uniform_blueprint,
)
from marl.agents.search_openspiel import OpenSpielSearch, iterate_search, load_game
from marl.cli import main
from marl.errors import ConfigError


def _random_tabular(game, seed=0):
    from open_spiel.python import policy as osp

    pol = osp.TabularPolicy(game)
    x = np.random.default_rng(seed).uniform(0.05, 1, pol.action_probability_array.shape)
    x = x * pol.legal_actions_mask
    pol.action_probability_array = x / x.sum(1, keepdims=True)
    return pol


# ------------------------------------------------------------------------------ the update


def test_update_is_md_at_alpha_zero_and_zero_on_illegal_actions():
    log_pi = np.log(np.array([0.2, 0.5, 0.3, 1.0]))  # the last is illegal: ignored
    q = np.array([1.0, -1.0, 0.5, 9.0])
    legal = np.array([True, True, True, False])
    new = np.exp(mmd_log_policy(log_pi, q, legal, eta=0.7))
    md = np.array([0.2, 0.5, 0.3]) * np.exp(0.7 * q[:3])
    np.testing.assert_allclose(new[:3], md / md.sum(), rtol=1e-12)
    assert new[3] == 0.0
    # MMD with a uniform magnet: the closed form, and the same in jax.numpy (float32)
    mmd = np.exp(mmd_log_policy(log_pi, q, legal, eta=2.0, alpha=0.5))
    z = (np.log([0.2, 0.5, 0.3]) + 2.0 * 0.5 * np.log(1 / 3) + 2.0 * q[:3]) / (1 + 2.0 * 0.5)
    np.testing.assert_allclose(mmd[:3], np.exp(z) / np.exp(z).sum(), rtol=1e-12)
    j = np.exp(np.asarray(mmd_log_policy(log_pi, q, legal, 2.0, 0.5, xp=jnp)))
    np.testing.assert_allclose(j, mmd, atol=1e-6)
    # a large temperature pulls the policy to the magnet
    far = np.exp(mmd_log_policy(log_pi, q, legal, eta=1.0, alpha=1e6))
    np.testing.assert_allclose(far[:3], 1 / 3, atol=1e-5)


def test_search_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="eta must be > 0"):
        SearchConfig(eta=0.0)
    with pytest.raises(ConfigError, match="md or mmd"):
        SearchConfig(kind="cfr")


# ------------------------------------------------------------------ OpenSpiel, exact checks


@pytest.mark.parametrize(
    "kind,alpha,magnet",
    [("md", 0.0, "uniform"), ("mmd", 0.5, "uniform"), ("mmd", 2.0, "blueprint")],
)
def test_kuhn_search_equals_one_mmd_update_at_every_information_state(kind, alpha, magnet):
    """Exact beliefs and exact values: the searched policy is one behavioural-form MMD update
    of the blueprint (values from OpenSpiel's own tree walk, not ours)."""
    from open_spiel.python.algorithms import action_value

    game = load_game("kuhn_poker")
    pol = _random_tabular(game, seed=3)
    eta = 0.7
    search = OpenSpielSearch(game, pol, SearchConfig(kind, eta, alpha, magnet, 0, 0))
    calc = action_value.TreeWalkCalculator(game)
    calc.compute_all_states_action_values([pol, pol])
    assert len(pol.state_lookup) == 12
    for info, idx in pol.state_lookup.items():
        key = (search.info_player[info], info)
        q = calc.info_state_cf_prob_by_q_sum[key] / calc.info_state_cf_prob[key]
        pi = pol.action_probability_array[idx]
        legal = pol.legal_actions_mask[idx].astype(bool)
        rho = pi if magnet == "blueprint" else legal / legal.sum()
        z = np.where(legal, (np.log(pi) + eta * alpha * np.log(rho) + eta * q), -np.inf)
        ref = np.exp(z / (1 + eta * alpha) - np.max(z / (1 + eta * alpha)))
        ref = ref / ref.sum()
        got, _, q_ours = search.searched_probs(info)
        np.testing.assert_allclose(q_ours[legal], q[legal], atol=1e-12)
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_openspiel_exploitability_anchors_and_mmd_search_lowers_it():
    from open_spiel.python import policy as osp
    from open_spiel.python.algorithms import exploitability

    kuhn = load_game("kuhn_poker")
    assert exploitability.exploitability(kuhn, osp.UniformRandomPolicy(kuhn)) == pytest.approx(
        11 / 24, abs=1e-9
    )
    cfg = SearchConfig("mmd", eta=1.0, alpha=0.1, samples=0, rollouts=0)
    expl = [exploitability.exploitability(kuhn, p) for p in iterate_search(kuhn, cfg, 3)]
    assert expl[0] == pytest.approx(0.458333, abs=1e-6)
    assert expl[1] < expl[0] and expl[3] < expl[1]
    assert expl[3] < 0.2


def test_sampled_beliefs_and_rollouts_estimate_the_exact_values():
    game = load_game("kuhn_poker")
    pol = _random_tabular(game, seed=1)
    exact = OpenSpielSearch(game, pol, SearchConfig(samples=0, rollouts=0))
    mc = OpenSpielSearch(game, pol, SearchConfig(samples=400, rollouts=4), seed=0)
    info = next(iter(exact.histories))
    np.testing.assert_allclose(mc.q_values(info), exact.q_values(info), atol=0.25)


# --------------------------------------------------------------------------- tiny Hanabi


@pytest.fixture(scope="module")
def tiny_a():
    from marl import envs

    return envs.make_array_env("tiny_hanabi/A")


def test_tiny_hanabi_pays_the_table(tiny_a):
    from marl.envs.tiny_hanabi import games

    env = tiny_a
    raw = env.env
    payoff = games()["A"]["payoff"]
    for c0, c1, a0, a1 in [(0, 1, 1, 0), (1, 0, 0, 1), (1, 1, 1, 1)]:
        state, ts = env.restart_from(raw.state_from(jnp.array([c0, c1])))
        assert ts.avail_actions[0, :2].all() and not ts.avail_actions[1, :2].any()
        state, ts = env.step(jax.random.PRNGKey(0), state, jnp.array([a0, raw.noop]))
        assert not ts.episode_done and ts.avail_actions[1, :2].all()
        state, ts = env.step(jax.random.PRNGKey(0), state, jnp.array([raw.noop, a1]))
        assert ts.episode_done
        assert float(ts.reward[0]) == payoff[c0, c1, a0, a1]
    uniform = jnp.full((raw.num_info_states, env.spec.num_actions), 0.5)
    assert float(raw.expected_return(uniform)) == pytest.approx(payoff.mean())


def test_jax_search_exact_values_on_tiny_hanabi(tiny_a):
    """The pure-JAX searcher's exact q (belief weights by the partner's action likelihood,
    values by enumeration) against the payoff table worked by hand in NumPy."""
    from marl.agents.search_beliefs import PlayContext, tiny_hanabi_belief
    from marl.envs.tiny_hanabi import games

    env = tiny_a
    raw = env.env
    payoff = games()["A"]["payoff"].astype(np.float64)
    probs = np.random.default_rng(0).uniform(0.1, 1.0, (raw.num_info_states, 2))
    probs /= probs.sum(1, keepdims=True)
    table = np.log(np.concatenate([probs, np.full((len(probs), 1), 1e-9)], 1))
    bp = tabular_blueprint(raw.info_index, jnp.asarray(table, jnp.float32))
    search = JaxSearch(env, bp, SearchConfig("md", eta=1.0, samples=0, rollouts=0))
    belief = tiny_hanabi_belief(env, bp)
    p0 = probs[:2]  # [card0, a0]
    p1 = probs[2:].reshape(2, 2, 2)  # [card1, a0, a1]
    none = jnp.full((2,), -1)
    ctx0 = PlayContext(raw.state_from(jnp.array([1, 0])), jnp.array(0), None, None, none)
    parts, w = belief(bp.params, jax.random.PRNGKey(0), ctx0, 0)
    q = np.asarray(search.q_values(bp.params, jax.random.PRNGKey(0), parts, w, 0))
    ref = [np.mean([p1[c1, a] @ payoff[1, c1, a] for c1 in range(2)]) for a in range(2)]
    np.testing.assert_allclose(q[:2], ref, atol=1e-5)
    ctx1 = PlayContext(raw.state_from(jnp.array([0, 1]), 1), jnp.array(1), None, None, none)
    parts, w = belief(bp.params, jax.random.PRNGKey(0), ctx1, 0)
    q = np.asarray(search.q_values(bp.params, jax.random.PRNGKey(0), parts, w, 1))
    post = p0[:, 1] / p0[:, 1].sum()  # P(card0 | a0 = 1)
    ref = [post @ payoff[:, 1, 1, a] for a in range(2)]
    np.testing.assert_allclose(q[:2], ref, atol=1e-5)
    # Monte-Carlo rollouts with common random numbers estimate the same values
    mc = JaxSearch(env, bp, SearchConfig("md", eta=1.0, samples=0, rollouts=256))
    parts, w = belief(bp.params, jax.random.PRNGKey(0), ctx0, 0)
    q_mc = np.asarray(mc.q_values(bp.params, jax.random.PRNGKey(1), parts, w, 0))
    ref0 = [np.mean([p1[c1, a] @ payoff[1, c1, a] for c1 in range(2)]) for a in range(2)]
    np.testing.assert_allclose(q_mc[:2], ref0, atol=0.3)


@pytest.mark.parametrize("game", ["A", "E"])
def test_iterated_md_search_improves_tiny_hanabi_monotonically(game):
    from marl.search import tiny_hanabi_md

    out = tiny_hanabi_md(game, eta=0.5, iterations=12)
    r = np.array(out["returns"])
    assert np.all(np.diff(r) >= -1e-5), r
    assert r[-1] > r[0] + 0.3 * (out["optimum"] - r[0])


# ------------------------------------------------------------------------ Hanabi belief


def test_hanabi_particles_respect_the_public_record():
    from marl import envs
    from marl.agents.search_beliefs import PlayContext, hanabi_belief

    env = envs.make_array_env("hanabi/small")
    raw = env.env
    H, CR = raw.hand_size, raw.num_colors * raw.num_ranks
    state, ts = env.reset(jax.random.PRNGKey(2))
    # a hint from player 0 to player 1 (colour 0), then player 1 searches
    hint = 2 * H
    state, ts = env.step(jax.random.PRNGKey(0), state, jnp.array([hint, raw.num_moves - 1]))
    s = state.env_state
    bp = uniform_blueprint()
    ctx = PlayContext(s, jnp.array(1), ts.obs, ts.avail_actions, jnp.array([hint, -1]))
    parts, w = jax.jit(lambda k: hanabi_belief(env, bp)(None, k, ctx, 64))(jax.random.PRNGKey(1))
    hands = np.asarray(parts.player_hands[:, 1]).reshape(64, H, CR)
    know = np.asarray(s.card_knowledge[1])
    assert (hands.sum(-1) == 1).all()
    assert (hands * (1 - know)[None]).sum() == 0  # every card allowed by the hints
    unseen = np.asarray(s.player_hands[1]).reshape(H, CR).sum(0) + np.asarray(s.deck).reshape(
        -1, CR
    ).sum(0)
    decks = np.asarray(parts.deck).reshape(64, -1, CR)
    np.testing.assert_array_equal(hands.sum(1) + decks.sum(1), np.broadcast_to(unseen, (64, CR)))
    np.testing.assert_array_equal(
        np.asarray(parts.player_hands[:, 0]), np.asarray(s.player_hands[0])[None].repeat(64, 0)
    )
    assert np.isfinite(np.asarray(w)).all() and float(w.max()) == pytest.approx(1.0)
    assert len({h.tobytes() for h in hands}) > 1  # the hand is not given away


# ---------------------------------------------------------------------------- marl search


def test_marl_search_writes_a_run(tmp_path, capsys):
    rc = main(
        [
            "search",
            "env=openspiel/kuhn_poker",
            "search=mmd",
            "episodes=6",
            "iterations=2",
            f"logger.root={tmp_path}",
            "logger.wandb.mode=disabled",
            "logger.progress=false",
        ]
    )
    assert rc == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    final = json.loads(
        (tmp_path / run_dir.split(str(tmp_path))[-1].lstrip("/") / "final.json").read_text()
    )
    assert final["exploitability/blueprint"] == pytest.approx(0.458333, abs=1e-6)
    assert final["exploitability/search"] < final["exploitability/blueprint"]
    assert len(final["iterated/exploitability"]) == 3
    assert len(final["scores/search"]) == 6


@pytest.mark.parametrize(
    "argv,message",
    [
        (["search", "eta=-1"], "eta must be > 0"),
        (["search", "search.etaa=1"], "unknown config key 'search.etaa'"),
        (["search", "env=openspiel/kuhn"], "unknown env 'openspiel/kuhn'"),
        (["search", "env=mpe/simple_spread"], "search has beliefs for"),
        (["search", "env=tiny_hanabi/A", "blueprint=/nonexistent"], "not a run directory"),
        (["search", "env=openspiel/kuhn_poker", "blueprint=/x"], "blueprint=uniform"),
        (["train", "env=openspiel/kuhn_poker"], "OpenSpiel game for `marl search`"),
        (["search", "env=hanabi/small", "search=mmd"], "samples >= 1 and rollouts >= 1"),
        (["search", "env=hanabi/small", "iterations=3"], "iterations > 0 takes tiny Hanabi"),
        (["search", "env=tiny_hanabi/A", "search.players=[2]"], "not among the seats 0..1"),
        (["search", "env=openspiel/dark_hex", "env.kwargs.num_rows=4"], "histories"),
    ],
)
def test_marl_search_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    import marl.agents.search_openspiel as so

    monkeypatch.setattr(so, "MAX_NODES", 20_000)  # a big game fails fast
    rc = main([*argv, f"logger.root={tmp_path}", "logger.wandb.mode=disabled"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not list(tmp_path.rglob("config.yaml"))  # no run directory left behind


def test_blueprint_from_another_environment_is_refused(tmp_path, capsys):
    run = tmp_path / "bp"
    (run / "checkpoints" / "1").mkdir(parents=True)
    (run / "config.yaml").write_text("env:\n  name: hanabi\n  kwargs: {}\n")
    rc = main(["search", "env=hanabi/small", f"blueprint={run}", f"logger.root={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "was trained on hanabi, not on hanabi/small" in err


def test_policy_blueprint_is_the_policys_distribution(tiny_a, algo="ippo"):
    """A trained-run policy as a blueprint: log-probabilities over the acting agent's legal
    actions, normalised, whose argmax is the policy's own greedy action."""
    from marl.agents import make_policy
    from marl.agents.search import policy_blueprint
    from marl.config import compose
    from marl.policy import PolicyInput

    # (algo=mat passes too, with the waiting agent's no-op teacher-forced, in 35 s of compile:
    # left out of the suite for time)
    cfg = compose([f"algo={algo}", "env=tiny_hanabi/A"])
    policy = make_policy(cfg.algo, tiny_a.spec, 1)
    params = policy.init(jax.random.PRNGKey(0))
    bp = policy_blueprint(policy, params)
    state, ts = tiny_a.reset(jax.random.PRNGKey(4))
    lp = bp.log_probs(bp.params, ts.obs, ts.avail_actions, ts.state)  # [A, nA]
    p = np.exp(np.asarray(lp))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert (p[~np.asarray(ts.avail_actions)] < 1e-6).all()
    inp = PolicyInput(
        ts.obs[None, None],
        ts.state[None, None],
        ts.avail_actions[None, None],
        jnp.ones((1, 1), bool),
        jnp.ones((1, 1, 2), bool),
    )
    _, greedy, logp, _ = policy.act(
        params, policy.initial_hidden(1), inp, jax.random.PRNGKey(0), True
    )
    assert int(greedy[0, 0, 0]) == int(np.argmax(p[0]))
    np.testing.assert_allclose(float(logp[0, 0, 0]), float(lp[0, greedy[0, 0, 0]]), atol=1e-5)
