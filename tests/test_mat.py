"""MAT and CommFormer: the top-k graph and its straight-through gradient, the bi-level
schedule, gradients through the PPO loss, autoregressive decoding against teacher forcing,
the attention masks, the gate, the warm-up, and a tiny training run with resume."""

import shutil
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import TINY, rows

from marl import envs
from marl.agents import make_policy
from marl.agents.commformer import decoder_masks, gated, num_senders, topk_graph
from marl.config import compose
from marl.policy import PolicyInput, TrainContext
from marl.ppo import TrainState, Transition, ValueNorm, ppo_loss, ppo_update
from marl.trainer import ppo_config, train

KEY = jax.random.PRNGKey(0)


@dataclass
class Setup:
    cfg: Any
    env: Any
    policy: Any
    params: Any
    inp: PolicyInput
    hidden: jax.Array
    act: Any  # jitted policy.act
    evaluate: Any  # jitted policy.evaluate
    logps: Any  # jitted agent_logps


def agent_logps(policy, evaluate):
    """``fn(params, hidden, inp, actions) -> [nA, T, E, A]``: entry ``[b, ..., i]`` is the
    logp of agent ``i`` taking action ``b``, the other agents' actions as given (the full
    distribution of each agent, from the teacher-forced pass). One call of ``evaluate`` over
    the ``A x nA`` variations stacked on the time axis."""
    n, n_actions = policy.N, policy.spec.num_actions

    def fn(params, hidden, inp, actions):
        T = actions.shape[0]
        b = jnp.arange(n_actions, dtype=actions.dtype)[:, None, None, None]  # [nA, 1, 1, 1]
        acts = jnp.stack(
            [
                jnp.broadcast_to(actions, (n_actions, *actions.shape)).at[..., i].set(b[..., 0])
                for i in range(n)
            ]
        )  # [A, nA, T, E, A]
        tiled = jax.tree.map(lambda x: jnp.tile(x, (n * n_actions,) + (1,) * (x.ndim - 1)), inp)
        logp = evaluate(params, hidden, tiled, acts.reshape(-1, *actions.shape[1:]))[0]
        logp = logp.reshape(n, n_actions, T, *logp.shape[1:])  # [A, nA, T, E, A]
        return jnp.stack([logp[i, ..., i] for i in range(n)], -1)

    return jax.jit(fn)


def make_setup(
    overrides, env_name="smax/3m", num_envs=2, seed=0, params=None, inp=None, **env_kwargs
) -> Setup:
    """A policy from ``overrides``, its parameters (``params``, or fresh ones) and a reset
    batch (``inp``, or a fresh one) with jitted ``act`` and ``evaluate``."""
    cfg = compose(overrides)
    env = envs.make_array_env(env_name, **env_kwargs)
    policy = make_policy(cfg.algo, env.spec, 100)
    if params is None:
        params = jax.jit(policy.init)(jax.random.PRNGKey(seed))
    if inp is None:
        reset = jax.jit(env.reset_batch, static_argnums=1)
        _, ts = reset(jax.random.PRNGKey(seed + 1), num_envs)
        inp = PolicyInput(
            ts.obs[None],
            ts.state[None],
            ts.avail_actions[None],
            jnp.ones((1, num_envs), bool),
            ts.alive[None],
        )
    evaluate = jax.jit(policy.evaluate)
    return Setup(
        cfg,
        env,
        policy,
        params,
        inp,
        policy.initial_hidden(inp.obs.shape[1]),
        jax.jit(policy.act, static_argnames="greedy"),
        evaluate,
        agent_logps(policy, evaluate),
    )


def with_alpha(s: Setup, key) -> dict:
    """``s.params`` with a random ``alpha`` (the initial one is all ones: every tie)."""
    alpha = jax.random.normal(key, (s.policy.N, s.policy.N))
    return {**s.params, "graph": {"alpha": alpha}}


def random_actions(s: Setup, key) -> jax.Array:
    return s.env.random_actions(key, s.inp.avail_actions)


def changed(a, b) -> list[bool]:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return [not np.array_equal(x, y) for x, y in pairs]


@pytest.fixture(scope="module")
def commformer():
    """CommFormer on smax/3m (k = 1 sender per receiver), two copies."""
    return make_setup(["algo=commformer"])


@pytest.fixture(scope="module")
def mat(commformer):
    """MAT on the same inputs, with the same network parameters."""
    c = commformer
    return make_setup(["algo=mat"], params={"net": c.params["net"]}, inp=c.inp)


@pytest.fixture(scope="module")
def spread5():
    """CommFormer with one block on simple_spread with 5 agents (k = 2)."""
    return make_setup(["algo=commformer", "algo.network.num_blocks=1"], "mpe/simple_spread", N=5)


@pytest.fixture(scope="module")
def mat_continuous():
    return make_setup(["algo=mat"], "mpe/simple_spread", continuous=True)


# ----------------------------------------------------------------------------- the graph
@pytest.mark.parametrize("n", [3, 5, 8])
@pytest.mark.parametrize("sparsity", [0.2, 0.4, 1.0])
def test_topk_rows(n, sparsity):
    k = num_senders(n, sparsity)
    assert k == min(max(int(n * sparsity), 1), n - 1)
    eye = np.eye(n, dtype=bool)
    alpha = jax.random.normal(jax.random.PRNGKey(n), (n, n))
    for key in (None, jax.random.PRNGKey(7), jax.random.PRNGKey(8)):
        m, support = topk_graph(alpha, k, key)
        support = np.asarray(support)
        assert support[eye].all()
        np.testing.assert_array_equal((support & ~eye).sum(1), np.full(n, k))
        np.testing.assert_allclose(m, support.astype(np.float32), atol=1e-6)
    # the deterministic graph takes the k largest alpha of each row, the diagonal aside
    m, support = topk_graph(alpha, k)
    off = np.where(eye, -np.inf, np.asarray(alpha))
    expect = np.zeros((n, n), bool)
    np.put_along_axis(expect, np.argsort(-off, 1)[:, :k], True, 1)
    np.testing.assert_array_equal(np.asarray(support), expect | eye)
    # S = 0: self loops only
    assert num_senders(n, 0.0) == 0
    m, support = topk_graph(alpha, 0, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(m, np.eye(n))
    np.testing.assert_array_equal(support, eye)


def test_topk_rows_when_the_softmax_saturates():
    """Every row has k senders even where the softmax underflows to 0 (a low
    ``graph.temperature``, or a large gap in ``alpha``)."""
    n, k = 5, 2
    alpha = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    eye = np.eye(n, dtype=bool)
    for a, t in ((alpha, 0.01), (jnp.zeros((n, n)).at[0, 1].set(200.0), 1.0)):
        _, support = topk_graph(a, k, temperature=t)
        senders = (np.asarray(support) & ~eye).sum(1)
        assert senders.tolist() == [k] * n, f"senders per row {senders.tolist()}, not {k}"


def test_straight_through_gradient():
    n, k = 5, 2
    alpha = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    w = jax.random.normal(jax.random.PRNGKey(1), (n, n))  # M.sum() would have zero gradient
    key = jax.random.PRNGKey(2)
    g = jax.grad(lambda a: (topk_graph(a, k, key)[0] * w).sum())(alpha)
    assert np.isfinite(g).all() and np.abs(g).sum() > 0
    assert (np.asarray(g)[np.eye(n, dtype=bool)] == 0).all()  # the self loop is fixed


def test_evaluation_graph_is_deterministic(commformer):
    s = commformer
    params = with_alpha(s, jax.random.PRNGKey(3))
    m1, s1 = s.policy.graph(params)
    m2, s2 = s.policy.graph(params)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(s1, s2)
    _, a1, lp1, _ = s.act(params, s.hidden, s.inp, jax.random.PRNGKey(1), greedy=True)
    _, a2, lp2, _ = s.act(params, s.hidden, s.inp, jax.random.PRNGKey(2), greedy=True)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(lp1, lp2)
    adjacency = s.policy.summaries(params)["comm/adjacency"]
    np.testing.assert_array_equal(adjacency, np.asarray(s1, np.float32))


def test_warmup_then_k_hot(commformer):
    s = commformer
    n, k = s.policy.N, s.policy.k
    warmup = s.cfg.algo.graph.warmup
    assert warmup == 10 and k == 1
    params = with_alpha(s, jax.random.PRNGKey(4))
    alpha = np.asarray(params["graph"]["alpha"])
    eye = np.eye(n, dtype=bool)
    for update in (0, warmup - 1):
        m, support = s.policy.graph(params, TrainContext(KEY, jnp.int32(update)))
        np.testing.assert_array_equal(m, np.where(eye, 1.0, alpha))
        assert np.asarray(support).all()
    for update in (warmup, warmup + 50):
        for key in (jax.random.PRNGKey(1), jax.random.PRNGKey(2)):
            m, support = s.policy.graph(params, TrainContext(key, jnp.int32(update)))
            support = np.asarray(support)
            assert support[eye].all()
            np.testing.assert_array_equal((support & ~eye).sum(1), np.full(n, k))
            np.testing.assert_allclose(m, support.astype(np.float32), atol=1e-6)


def test_frozen_graph_is_the_evaluation_graph_without_gradient(commformer):
    c = commformer
    s = make_setup(
        ["algo=commformer", "algo.graph.freeze=0.5", "algo.graph.warmup=0"],
        params=c.params,
        inp=c.inp,
    )
    params = with_alpha(s, jax.random.PRNGKey(5))
    exact = s.policy.graph(params)
    w = jax.random.normal(KEY, (s.policy.N, s.policy.N))

    def f(alpha, update, key):
        p = {**params, "graph": {"alpha": alpha}}
        return (s.policy.graph(p, TrainContext(key, update))[0] * w).sum()

    alpha = params["graph"]["alpha"]
    graph = jax.jit(lambda key, update: s.policy.graph(params, TrainContext(key, update)))
    grad = jax.jit(jax.grad(f))
    for key in (jax.random.PRNGKey(1), jax.random.PRNGKey(2)):
        frozen = graph(key, jnp.int32(50))  # 0.5 x 100 updates
        np.testing.assert_array_equal(frozen[1], exact[1])
        assert not np.asarray(grad(alpha, jnp.int32(50), key)).any()
        assert np.asarray(grad(alpha, jnp.int32(49), key)).any()


# ----------------------------------------------------------------------------- optimiser
@pytest.mark.parametrize("minibatches,graph_steps", [(1, {4, 9}), (2, {8, 9})])
def test_bilevel_schedule(commformer, minibatches, graph_steps):
    cfg = compose(
        [
            "algo=commformer",
            "algo.graph.period=5",
            "algo.update_epochs=5",
            f"algo.num_minibatches={minibatches}",
        ]
    )
    policy = make_policy(cfg.algo, commformer.env.spec, 100)
    params = commformer.params
    opt = policy.optimizer()
    state = opt.init(params)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)

    @jax.jit
    def update(params, state):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for step in range(10):
        new, state = update(params, state)
        graph, net = changed(params["graph"], new["graph"]), changed(params["net"], new["net"])
        if step in graph_steps:
            assert all(graph) and not any(net), step
        else:
            assert not any(graph) and all(net), step
        params = new


# ----------------------------------------------------------------------------- PPO
@pytest.fixture(scope="module")
def bilevel(commformer):
    """CommFormer with one PPO epoch per update and period 2: the first update trains the
    network, the second the graph; a one-step rollout of 2 copies as the batch."""
    c = commformer
    s = make_setup(
        [
            "algo=commformer",
            "algo.graph.period=2",
            "algo.update_epochs=1",
            "algo.num_minibatches=1",
        ],
        params=c.params,
        inp=c.inp,
    )
    _, action, logp, value = c.act(c.params, c.hidden, c.inp, jax.random.PRNGKey(1))
    shape = logp.shape
    reward = jax.random.normal(jax.random.PRNGKey(2), shape)
    batch = Transition(s.inp, action, logp, value, reward, jnp.zeros(shape[:2], bool))
    return s, batch


def test_ppo_loss_gradients_reach_graph_and_network(bilevel):
    s, batch = bilevel
    cfg = ppo_config(s.cfg.algo)
    assert cfg.huber_delta == 10.0
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    adv = jax.random.normal(k1, batch.logp.shape)
    target = jax.random.normal(k2, batch.logp.shape)
    ctx = TrainContext(jax.random.PRNGKey(4), jnp.int32(20))  # past the warm-up (10)

    def loss(p):
        return ppo_loss(s.policy, cfg, p, s.hidden, batch, adv, target, batch.value, ctx)

    grads, metrics = jax.jit(jax.grad(loss, has_aux=True))(s.params)
    g_alpha = np.asarray(grads["graph"]["alpha"])
    assert np.isfinite(g_alpha).all() and np.abs(g_alpha).sum() > 0
    g_net = jax.tree.leaves(grads["net"])
    assert all(np.isfinite(g).all() for g in g_net)
    assert float(optax.tree.norm(grads["net"])) > 0
    assert float(metrics["comm/density"]) == pytest.approx(0.5)  # k = 1 of 2 others
    assert np.isfinite(float(metrics["loss/total"]))


def test_ppo_update_alternates_network_and_graph(bilevel):
    s, batch = bilevel
    cfg = ppo_config(s.cfg.algo)
    assert (cfg.update_epochs, cfg.num_minibatches) == (1, 1)
    opt = s.policy.optimizer()
    state = TrainState(s.params, opt.init(s.params), ValueNorm.create())
    step = jax.jit(
        lambda st, k: ppo_update(s.policy, cfg, opt, st, batch, s.hidden, s.inp, s.hidden, k)
    )
    one, m1 = step(state, jax.random.PRNGKey(5))  # epoch 0: the network
    assert int(one.update) == 1 and np.isfinite(float(m1["loss/total"]))
    np.testing.assert_array_equal(one.params["graph"]["alpha"], s.params["graph"]["alpha"])
    assert any(changed(s.params["net"], one.params["net"]))
    two, _ = step(one, jax.random.PRNGKey(6))  # epoch 1: the graph
    assert int(two.update) == 2
    assert not np.array_equal(two.params["graph"]["alpha"], one.params["graph"]["alpha"])
    assert not any(changed(one.params["net"], two.params["net"]))


# ----------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("name", ["mat", "commformer"])
def test_decoding_matches_teacher_forcing(name, request):
    s = request.getfixturevalue(name)
    avail = np.asarray(s.inp.avail_actions)
    _, a, lp, v = s.act(s.params, s.hidden, s.inp, jax.random.PRNGKey(1))
    assert a.shape == lp.shape == v.shape == s.inp.alive.shape
    assert np.take_along_axis(avail, np.asarray(a)[..., None], -1).all()  # legal actions
    logp, entropy, value, extras = s.evaluate(s.params, s.hidden, s.inp, a)
    np.testing.assert_allclose(logp, lp, atol=1e-5)
    np.testing.assert_allclose(value, v, atol=1e-5)
    assert np.isfinite(entropy).all() and (np.asarray(entropy) >= 0).all()
    # each agent's distribution (given the others' actions) is normalised over legal actions
    dist = np.asarray(s.logps(s.params, s.hidden, s.inp, a))  # [nA, T, E, A]
    probs = np.where(np.moveaxis(avail, -1, 0), np.exp(dist), 0.0)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # greedy decoding takes each agent's most likely action given the previous agents'
    _, g, glp, gv = s.act(s.params, s.hidden, s.inp, jax.random.PRNGKey(2), greedy=True)
    dist = np.asarray(s.logps(s.params, s.hidden, s.inp, g))
    np.testing.assert_array_equal(g, dist.argmax(0))
    np.testing.assert_allclose(glp, dist.max(0), atol=1e-5)
    np.testing.assert_allclose(s.evaluate(s.params, s.hidden, s.inp, g)[0], glp, atol=1e-5)
    np.testing.assert_allclose(gv, v, atol=1e-6)


def test_continuous_decoding_matches_teacher_forcing(mat_continuous):
    s = mat_continuous
    assert s.env.spec.action_type == "continuous"
    _, a, lp, v = s.act(s.params, s.hidden, s.inp, jax.random.PRNGKey(1))
    assert a.shape == (*lp.shape, s.env.spec.num_actions)
    logp, _, value, _ = s.evaluate(s.params, s.hidden, s.inp, a)
    np.testing.assert_allclose(logp, lp, atol=1e-5)
    np.testing.assert_allclose(value, v, atol=1e-5)
    _, g, glp, _ = s.act(s.params, s.hidden, s.inp, jax.random.PRNGKey(2), greedy=True)
    np.testing.assert_allclose(s.evaluate(s.params, s.hidden, s.inp, g)[0], glp, atol=1e-5)
    # the mode of each agent's Gaussian: nudging its action lowers its log-density
    for i in range(s.policy.N):
        nudged = g.at[..., i, :].add(0.1)
        assert (
            np.asarray(s.evaluate(s.params, s.hidden, s.inp, nudged)[0])[..., i] < glp[..., i]
        ).all()


# ----------------------------------------------------------------------------- masking
def perturbed(s: Setup, j: int, key) -> PolicyInput:
    noise = jax.random.normal(key, s.inp.obs[..., j, :].shape)
    return s.inp._replace(obs=s.inp.obs.at[..., j, :].add(noise))


def test_masked_edge_blocks_information(spread5):
    s = spread5
    assert (s.policy.N, s.policy.k) == (5, 2)
    params = with_alpha(s, jax.random.PRNGKey(6))
    support = np.asarray(s.policy.graph(params)[1])
    actions = random_actions(s, jax.random.PRNGKey(7))
    base_logp, _, base_value, _ = s.evaluate(params, s.hidden, s.inp, actions)
    base_dist = s.logps(params, s.hidden, s.inp, actions)
    checked = 0
    for i in range(s.policy.N):
        for j in range(s.policy.N):
            if j == i:
                continue
            inp = perturbed(s, j, jax.random.PRNGKey(10 * i + j))
            logp, _, value, _ = s.evaluate(params, s.hidden, inp, actions)
            if support[i, j]:  # a sender: receiver i's value moves
                assert np.abs(np.asarray(value - base_value)[..., i]).min() > 1e-6, (i, j)
            else:
                np.testing.assert_allclose(value[..., i], base_value[..., i], atol=1e-6)
                np.testing.assert_allclose(logp[..., i], base_logp[..., i], atol=1e-6)
                dist = s.logps(params, s.hidden, inp, actions)
                np.testing.assert_allclose(dist[..., i], base_dist[..., i], atol=1e-6)
                checked += 1
    assert checked == 5 * 2  # N - 1 - k non-senders per receiver


def test_masked_edges_block_actions(spread5):
    """An agent's action distribution ignores the actions of agents with no path to it in
    the graph. Agent 0 sends to agent 2 only, and agent 2 to no one; agents 3 and 4
    hear from agents 1, 3 and 4 alone, so agent 0's action must not reach them."""
    s = spread5
    senders = {0: (1, 3), 1: (3, 4), 2: (0, 1), 3: (1, 4), 4: (1, 3)}
    alpha = np.zeros((5, 5), np.float32)
    for r, ss in senders.items():
        alpha[r, list(ss)] = 5.0
    params = {**s.params, "graph": {"alpha": jnp.asarray(alpha)}}
    support = np.asarray(s.policy.graph(params)[1])
    np.testing.assert_array_equal(support, (alpha > 0) | np.eye(5, dtype=bool))
    reach = support.copy()  # reach[i, j]: a path j -> ... -> i
    for _ in range(5):
        reach = reach | ((reach.astype(int) @ support.astype(int)) > 0)
    assert not reach[3, 0] and not reach[4, 0]
    actions = random_actions(s, jax.random.PRNGKey(7))
    base = np.asarray(s.logps(params, s.hidden, s.inp, actions))
    leaks = set()
    for m in range(5):
        for b in range(s.policy.spec.num_actions):
            dist = np.asarray(s.logps(params, s.hidden, s.inp, actions.at[..., m].set(b)))
            moved = np.abs(dist - base).max(axis=(0, 1, 2)) > 1e-6
            leaks |= {(m, i) for i in range(5) if moved[i] and not reach[i, m]}
    assert not leaks, f"(sender, receiver) pairs without a path that still communicate: {leaks}"


def test_no_graph_means_no_communication(spread5):
    s = make_setup(
        ["algo=mat", "algo.graph.mode=none"],
        "mpe/simple_spread",
        params={"net": spread5.params["net"]},
        inp=spread5.inp,
        N=5,
    )
    assert s.policy.k == 0 and "graph" not in s.params
    actions = random_actions(s, jax.random.PRNGKey(7))
    base_logp, _, base_value, _ = s.evaluate(s.params, s.hidden, s.inp, actions)
    base_dist = s.logps(s.params, s.hidden, s.inp, actions)
    for j in range(s.policy.N):
        inp = perturbed(s, j, jax.random.PRNGKey(j))
        logp, _, value, _ = s.evaluate(s.params, s.hidden, inp, actions)
        dist = s.logps(s.params, s.hidden, inp, actions)
        others = [i for i in range(s.policy.N) if i != j]
        np.testing.assert_allclose(value[..., others], base_value[..., others], atol=1e-6)
        np.testing.assert_allclose(logp[..., others], base_logp[..., others], atol=1e-6)
        np.testing.assert_allclose(dist[..., others], base_dist[..., others], atol=1e-6)
        assert np.abs(np.asarray(value - base_value)[..., j]).min() > 1e-6  # its own obs counts


# ----------------------------------------------------------------------------- gating
def test_gated_and_decoder_masks():
    n = 4
    full = jnp.ones((n, n))
    m, support = gated(full, full > 0, jnp.array([[1.0, 0.0, 1.0, 1.0]]))
    assert m.shape == support.shape == (1, n, n)
    np.testing.assert_array_equal(m[0, 1], np.eye(n)[1])
    np.testing.assert_array_equal(support[0, 1], np.eye(n, dtype=bool)[1])
    np.testing.assert_array_equal(np.delete(np.asarray(m[0]), 1, 0), np.ones((n - 1, n)))
    assert np.delete(np.asarray(support[0]), 1, 0).all()
    eye = jnp.eye(n)
    (sm, ss), (d, ds) = decoder_masks(eye, eye > 0)
    first = np.zeros((n, n))
    first[:, 0] = 1
    # no communication: each receiver reads the start token alone; each action token mixes
    # the start token and itself
    np.testing.assert_array_equal(d, first)
    np.testing.assert_array_equal(ds, first > 0)
    own = np.maximum(first, np.eye(n))
    np.testing.assert_array_equal(sm, own)
    np.testing.assert_array_equal(ss, own > 0)
    (sm, ss), (d, ds) = decoder_masks(full, full > 0)
    for x in (sm, ss, d, ds):  # the full graph is MAT's causal mask
        np.testing.assert_array_equal(x, np.tril(np.ones((n, n))))
    # an edge i <- j shows agent j's action (decoder position j + 1) to receivers i > j
    g = jnp.eye(n).at[3, 1].set(1.0)
    (sm, _), (d, ds) = decoder_masks(g, g > 0)
    expect = first.copy()
    expect[3, 2] = 1
    np.testing.assert_array_equal(d, expect)
    # and to the token of agent 2 when agent 2 receives from agent 1 (position 3 mixes 2)
    g = jnp.eye(n).at[2, 1].set(1.0)
    (sm, _), _ = decoder_masks(g, g > 0)
    expect = own.copy()
    expect[3, 2] = 1
    np.testing.assert_array_equal(sm, expect)


def test_gate_penalty_and_rate():
    s = make_setup(["algo=commformer", "algo.gating=true", "algo.gate_penalty=0.1"])
    actions = random_actions(s, jax.random.PRNGKey(1))
    rates = []
    for seed in range(4):
        ctx = TrainContext(jax.random.PRNGKey(seed), jnp.int32(20))
        extras = s.evaluate(s.params, s.hidden, s.inp, actions, ctx)[3]
        rate, aux = float(extras["comm/rate"]), float(extras["aux_loss"])
        assert 0.0 <= rate <= 1.0 and 0.0 <= aux <= 0.1 + 1e-7
        assert aux == pytest.approx(0.1 * rate, abs=1e-7)
        assert rate * s.policy.N * 2 == pytest.approx(round(rate * s.policy.N * 2), abs=1e-5)
        rates.append(rate)
    assert len(set(rates)) > 1  # the gates are sampled per key


# ----------------------------------------------------------------------------- training
RUN = [
    *TINY,
    "total_timesteps=512",  # 8 updates of 4 x 16 steps, 4 chunks of 2
    "algo.rollout_len=16",
    "algo.num_minibatches=1",
    "algo=commformer",
    "env=smax/3m",
    "algo.network.embed_dim=16",
    "algo.graph.warmup=3",
    "algo.graph.period=2",
    "eval.absolute_factor=1",  # the same evaluation as the others
    "logger.wandb.mode=disabled",
    "eval.video=false",
]


def tiny_run(root):
    return compose([*RUN, f"logger.root={root}"])


@pytest.fixture(scope="module")
def commformer_run(tmp_path_factory):
    return train(tiny_run(tmp_path_factory.mktemp("commformer")))


def test_commformer_trains(commformer_run):
    m = rows(commformer_run, "metrics.jsonl")
    assert [r["update"] for r in m] == list(range(1, 9))
    for r in m:
        for k in ("loss/total", "loss/actor", "loss/critic", "loss/entropy"):
            assert np.isfinite(r[k]), (r["update"], k)
    # the soft graph of the warm-up keeps every edge, then k = 1 of the 2 other agents
    assert [r["comm/density"] for r in m] == pytest.approx([1.0] * 3 + [0.5] * 5)
    assert all(r["comm/rate"] == 1.0 for r in m)
    e = rows(commformer_run, "eval.jsonl")
    assert [r["update"] for r in e] == [2, 4, 6, 8]
    assert all(r["comm/graph_density"] == 0.5 for r in e)
    # the evaluation graph at every evaluation: rows, and an image per seed and evaluation
    mats = rows(commformer_run, "matrices.jsonl")
    adj = [r for r in mats if r["name"] == "comm/adjacency"]
    assert [r["update"] for r in adj] == [2, 4, 6, 8]
    for r in adj:
        a = np.asarray(r["matrix"])
        assert a.shape == (3, 3) and (np.diag(a) == 1).all() and a.sum() == 3 + 3
    pngs = sorted(p.name for p in (commformer_run / "matrices" / "comm_adjacency").iterdir())
    assert pngs == [f"seed0-update{u}.png" for u in (2, 4, 6, 8)]


def test_commformer_resume_ends_like_an_uninterrupted_run(commformer_run, tmp_path):
    # the run as if killed after its checkpoint at update 4 (the later ones never written)
    part = tmp_path / "run"
    shutil.copytree(commformer_run, part)
    for step in (6, 8):
        shutil.rmtree(part / "checkpoints" / str(step))
    resumed = train(compose([f"resume={part}"]))
    assert resumed == part
    assert rows(resumed, "metrics.jsonl") == rows(commformer_run, "metrics.jsonl")
    assert rows(resumed, "eval.jsonl") == rows(commformer_run, "eval.jsonl")
