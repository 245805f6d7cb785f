"""Decision-time search experiments and ``marl search``.

- :func:`tiny_hanabi_md`: MD search (pure JAX) at every decision point of a tiny Hanabi game,
  iterated from the uniform blueprint, with the exact expected return after every round.
- :func:`openspiel_iterate`: MMD / MD search at every information state of an OpenSpiel game,
  iterated, with OpenSpiel's exploitability after every round.
- :func:`run_search`: ``marl search``: evaluation games with search and with the blueprint
  alone, a run directory and a W&B run (job type ``search``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from marl.agents.search import JaxSearch, SearchConfig, mmd_log_policy, tabular_blueprint


def tiny_hanabi_md(
    game: str, eta: float, iterations: int, *, rollouts: int = 0, seed: int = 0
) -> dict[str, Any]:
    """MD search from the uniform blueprint on tiny Hanabi ``game``, applied at every decision
    point and iterated (each round's searched policy is the next round's blueprint).

    Beliefs are exact (the partner's card enumerated, weighted by chance and by the blueprint's
    probability of the partner's action); action values exact (``rollouts=0``) or Monte-Carlo.
    Returns ``{"returns": [expected return after round 0..iterations], "optimum": ...}``.
    """
    from marl import envs
    from marl.envs.tiny_hanabi import games

    env = envs.make_array_env(f"tiny_hanabi/{game}")
    raw = env.env
    nA = env.spec.num_actions
    c0, c1 = raw.num_cards
    n0, n1 = raw.move_counts
    K = max(c0, c1)
    n_info = raw.num_info_states
    player = np.array([0] * c0 + [1] * (n_info - c0))
    legal = np.zeros((n_info, nA), bool)
    legal[:c0, :n0] = True
    legal[c0:, :n1] = True
    # the particles of every information state: [n_info, K] card pairs and player 0's action
    cards = np.zeros((n_info, K, 2), np.int32)
    act0 = np.full((n_info,), -1, np.int32)
    valid = np.zeros((n_info, K), bool)
    for c in range(c0):  # player 0 holding c: player 1's card unknown
        cards[c, :c1] = [(c, y) for y in range(c1)]
        valid[c, :c1] = True
    for y in range(c1):  # player 1 holding y, having seen action a: player 0's card unknown
        for a in range(n0):
            i = c0 + y * n0 + a
            cards[i, :c0] = [(x, y) for x in range(c0)]
            act0[i] = a
            valid[i, :c0] = True
    particles = jax.vmap(jax.vmap(raw.state_from, in_axes=(0, None)))(
        jnp.asarray(cards), jnp.asarray(act0)
    )
    bp = tabular_blueprint(raw.info_index, jnp.zeros((n_info, nA)))
    search = JaxSearch(env, bp, SearchConfig("md", eta=eta, samples=0, rollouts=rollouts))
    legal_j, player_j, valid_j = jnp.asarray(legal), jnp.asarray(player), jnp.asarray(valid)
    own_card = jnp.asarray(cards[..., 0])  # [n_info, K] player 0's card in each particle

    @jax.jit
    def round_(table, key):
        log_pi = jnp.where(legal_j, jax.nn.log_softmax(jnp.where(legal_j, table, -1e30)), -1e30)
        # belief weights: chance is uniform; player 1 reweights by pi_0(action0 | card0)
        like = jnp.exp(log_pi[own_card, jnp.clip(jnp.asarray(act0), 0)[:, None]])
        w = jnp.where(valid_j, jnp.where(player_j[:, None] == 1, like, 1.0), 0.0)
        w = jnp.where(w.sum(-1, keepdims=True) > 0, w, valid_j.astype(jnp.float32))
        keys = jax.random.split(key, n_info)
        q = jax.vmap(search._q_values, in_axes=(None, 0, 0, 0, 0))(
            log_pi, keys, particles, w, player_j
        )
        new = mmd_log_policy(log_pi, q, legal_j, eta, 0.0, None, xp=jnp)
        return new, raw.expected_return(jnp.exp(new))

    table = jnp.where(legal_j, 0.0, -1e30)
    uniform = jnp.exp(jax.nn.log_softmax(table))
    returns = [float(raw.expected_return(uniform))]
    key = jax.random.PRNGKey(seed)
    for _ in range(iterations):
        key, k = jax.random.split(key)
        table, ret = round_(table, k)
        returns.append(float(ret))
    return {
        "game": game,
        "eta": eta,
        "returns": returns,
        "optimum": float(games()[game]["optimal_return"]),
        "policy": np.exp(np.asarray(table)).round(4).tolist(),
    }


def openspiel_iterate(
    game_name: Any, config: SearchConfig, iterations: int, seed: int = 0
) -> dict[str, Any]:
    """Search at every information state of an OpenSpiel game, iterated from the uniform
    blueprint; OpenSpiel's exploitability (and NashConv) after every round."""
    from open_spiel.python.algorithms import exploitability

    from marl.agents.search_openspiel import iterate_search, load_game

    game = load_game(game_name) if isinstance(game_name, str) else game_name
    expl = [
        float(exploitability.exploitability(game, p))
        for p in iterate_search(game, config, iterations, seed=seed)
    ]
    return {"game": str(game), "exploitability": expl}


# ------------------------------------------------------------------------------------------
# marl search
# ------------------------------------------------------------------------------------------


def openspiel_game_string(name: str, kwargs: dict[str, Any]) -> str:
    """``dark_hex`` with ``{num_rows: 2}`` -> ``dark_hex(num_rows=2)``."""
    if not kwargs:
        return name
    return f"{name}({','.join(f'{k}={v}' for k, v in sorted(kwargs.items()))})"


def search_config(cfg: Any) -> SearchConfig:
    """The :class:`SearchConfig` of a ``marl search`` config's ``search`` block."""
    s = cfg.search
    return SearchConfig(
        str(s.kind),
        float(s.eta),
        float(s.alpha),
        str(s.magnet),
        int(s.samples),
        int(s.rollouts),
        str(s.play),
        str(s.rollout),
    )


def load_blueprint(
    run_dir: str | Path, env_name: str, env_kwargs: dict, step: int | None = None, seed: int = 0
):
    """The blueprint of a ``marl train`` run directory (seed index ``seed``'s parameters),
    checked to be trained on ``env_name`` with ``env_kwargs``. Returns ``(blueprint, env)``."""
    from omegaconf import OmegaConf

    from marl.agents.search import policy_blueprint
    from marl.config import validate
    from marl.errors import CheckpointError, ConfigError
    from marl.evaluate import _restore_params
    from marl.trainer import Trainer

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"blueprint {run_dir} is not a run directory (no config.yaml)")
    cfg = validate(OmegaConf.load(run_dir / "config.yaml"))
    trained = (cfg.env.name, dict(cfg.env.kwargs))
    if cfg.env.kind != "jax" or trained != (env_name, dict(env_kwargs)):
        raise ConfigError(
            f"blueprint {run_dir} was trained on {trained[0]} {trained[1] or ''}, "
            f"not on {env_name} {dict(env_kwargs) or ''}".replace("  ", " ")
        )
    trainer = Trainer(cfg, run_dir)
    try:
        params, meta = _restore_params(trainer, run_dir, step)
    except CheckpointError:
        raise
    except Exception as err:  # a run without checkpoints, a mismatched tree
        raise CheckpointError(f"cannot load the blueprint from {run_dir}: {err}") from None
    if not 0 <= seed < trainer.S:
        raise ConfigError(f"blueprint_seed={seed}: the run has seeds 0..{trainer.S - 1}")
    params = jax.tree.map(lambda x: x[seed], params)
    return policy_blueprint(trainer.policy, params, name=str(run_dir)), trainer.env


def _belief_for(env_name: str):
    from marl.agents import search_beliefs

    if env_name.startswith("tiny_hanabi/"):
        return search_beliefs.tiny_hanabi_belief
    if env_name.split("/")[0] == "hanabi":
        return search_beliefs.hanabi_belief
    from marl.errors import ConfigError

    raise ConfigError(
        f"search has beliefs for tiny_hanabi/* and hanabi, hanabi/small, not {env_name!r}"
    )


def mean_ci(x: Any, rng: int = 0) -> dict[str, float]:
    """Mean with a 95% bootstrap confidence interval."""
    from marl.stats import stratified_bootstrap_ci

    x = np.asarray(x, float)
    ci = stratified_bootstrap_ci({"x": x}, "mean", reps=2000, rng=rng)
    return {"mean": float(ci.point), "ci_low": float(ci.low), "ci_high": float(ci.high)}


def play_against_blueprint(
    search: JaxSearch,
    bp: Any,
    belief: Any,
    games: int,
    batch: int,
    seed: int = 0,
    players: Any = None,
    on_batch: Any = None,
) -> dict[str, Any]:
    """``games`` games with search (players in ``players``, default all) and, on the same
    deals, with the blueprint alone, ``batch`` games at a time in one compiled program each.
    ``on_batch(index, games done, {"search/score", "blueprint/score"}, scores so far)`` is
    called after every batch. Returns the scores, wall seconds, moves (the longest game of
    each batch, summed), decisions (all games' moves) and the compile time."""
    import time

    B = min(batch, games)
    t0 = time.perf_counter()
    with_search, mask = search.compile_play(bp.params, B, belief, players)
    alone, _ = search.compile_play(bp.params, B, None, players)
    compile_s = time.perf_counter() - t0
    out = {"search": [], "blueprint": []}
    seconds = {"search": 0.0, "blueprint": 0.0}
    steps = {"search": 0, "blueprint": 0}
    decisions = {"search": 0, "blueprint": 0}
    key = jax.random.PRNGKey(seed)
    done, index = 0, 0
    while done < games:
        key, k = jax.random.split(key)
        keys = jax.random.split(k, B)  # the same deals for both
        take = min(B, games - done)
        row = {}
        for label, fn in (("search", with_search), ("blueprint", alone)):
            t = time.perf_counter()
            ret, n = fn(bp.params, keys, mask)
            ret, n = np.asarray(ret), np.asarray(n)
            seconds[label] += time.perf_counter() - t
            steps[label] += int(n.max())
            decisions[label] += int(n.sum())
            out[label].extend(ret[:take].tolist())
            row[f"{label}/score"] = float(ret[:take].mean())
        done += take
        if on_batch is not None:
            on_batch(index, done, row, out)
        index += 1
    return {
        "scores": out,
        "seconds": seconds,
        "steps": steps,
        "decisions": decisions,
        "compile_s": compile_s,
        "batch": B,
    }


def _play_jax(cfg: Any, sc: SearchConfig, logger: Any, progress: Any) -> dict[str, Any]:
    from marl import envs
    from marl.agents import search_beliefs
    from marl.agents.search import JaxSearch, uniform_blueprint

    name, kwargs = str(cfg.env.name), dict(cfg.env.kwargs)
    if cfg.blueprint == "uniform":
        bp = uniform_blueprint()
        env = envs.make_array_env(name, agent_id=bool(cfg.env.agent_id), **kwargs)
    else:
        bp, env = load_blueprint(
            cfg.blueprint, name, kwargs, cfg.checkpoint_step, int(cfg.blueprint_seed)
        )
    depth = cfg.search.max_depth or env.spec.max_steps or 200
    search = JaxSearch(env, bp, sc, max_depth=int(depth))
    make_belief = _belief_for(name)
    if make_belief is search_beliefs.hanabi_belief:
        belief = make_belief(env, bp, str(cfg.search.likelihood))
    else:
        belief = make_belief(env, bp)
    players = None
    if cfg.search.players is not None:
        players = np.zeros(env.spec.num_agents, bool)
        players[list(cfg.search.players)] = True

    def on_batch(batch: int, done: int, row: dict, out: dict) -> None:
        logger.log_eval([{"seed": 0, "update": batch, "env_steps": done, **row}])
        s, b = np.mean(out["search"]), np.mean(out["blueprint"])
        progress.show(done, f"search {s:.3f} blueprint {b:.3f}")

    games = play_against_blueprint(
        search, bp, belief, int(cfg.episodes), int(cfg.batch), int(cfg.seed), players, on_batch
    )
    out, seconds, steps = games["scores"], games["seconds"], games["steps"]
    decisions = games["decisions"]
    result = {
        "score/search": mean_ci(out["search"]),
        "score/blueprint": mean_ci(out["blueprint"]),
        # a move of one game: the vmapped batch steps all its games at once
        "seconds_per_move/search": seconds["search"] / max(steps["search"], 1),
        "seconds_per_move/blueprint": seconds["blueprint"] / max(steps["blueprint"], 1),
        "moves_per_second/search": decisions["search"] / max(seconds["search"], 1e-9),
        "compile_seconds": games["compile_s"],
        "games_per_batch": games["batch"],
        "scores": out,
    }
    if name.startswith("tiny_hanabi/") and cfg.iterations > 0:
        game = name.split("/")[1]
        it = tiny_hanabi_md(
            game, sc.eta, int(cfg.iterations), rollouts=sc.rollouts, seed=int(cfg.seed)
        )
        result["iterated"] = {"expected_return": it["returns"], "optimum": it["optimum"]}
    return result


def _play_openspiel(cfg: Any, sc: SearchConfig, logger: Any, progress: Any) -> dict[str, Any]:
    import time

    from open_spiel.python import policy as os_policy
    from open_spiel.python.algorithms import exploitability

    from marl.agents.search_openspiel import OpenSpielSearch, load_game, search_policy

    game = load_game(openspiel_game_string(str(cfg.env.name), dict(cfg.env.kwargs)))
    bp = os_policy.UniformRandomPolicy(game)
    search = OpenSpielSearch(game, bp, sc, seed=int(cfg.seed))
    rng = np.random.default_rng(int(cfg.seed))
    scores, baseline, times = [], [], []
    for g in range(int(cfg.episodes)):
        seat = g % 2
        for label in ("search", "blueprint"):
            state = game.new_initial_state()
            # the same chance outcomes for both games
            chance = np.random.default_rng([int(cfg.seed), g])
            while not state.is_terminal():
                if state.is_chance_node():
                    acts, probs = zip(*state.chance_outcomes(), strict=True)
                    state.apply_action(int(chance.choice(acts, p=probs)))
                elif state.current_player() == seat and label == "search":
                    t = time.perf_counter()
                    state.apply_action(search.act(state))
                    times.append(time.perf_counter() - t)
                else:
                    probs = bp.action_probabilities(state)
                    acts = list(probs)
                    state.apply_action(int(rng.choice(acts, p=[probs[a] for a in acts])))
            (scores if label == "search" else baseline).append(state.returns()[seat])
        logger.log_eval(
            [
                {
                    "seed": 0,
                    "update": g,
                    "env_steps": g + 1,
                    "search/score": scores[-1],
                    "blueprint/score": baseline[-1],
                }
            ]
        )
        progress.show(g + 1, f"search {np.mean(scores):.3f} blueprint {np.mean(baseline):.3f}")
    result = {
        "score/search": mean_ci(scores),
        "score/blueprint": mean_ci(baseline),
        "seconds_per_move/search": float(np.mean(times)) if times else 0.0,
        "scores": {"search": scores, "blueprint": baseline},
    }
    if _zero_sum(game):  # exploitability is defined for two-player zero-sum games
        result["exploitability/blueprint"] = float(exploitability.exploitability(game, bp))
        searched = search_policy(search)
        result["exploitability/search"] = float(exploitability.exploitability(game, searched))
    if cfg.iterations > 0 and _zero_sum(game):
        it = openspiel_iterate(game, sc, int(cfg.iterations), seed=int(cfg.seed))
        result["iterated"] = {"exploitability": it["exploitability"]}
    return result


def _zero_sum(game: Any) -> bool:
    import pyspiel

    utility = game.get_type().utility
    return game.num_players() == 2 and utility in (
        pyspiel.GameType.Utility.ZERO_SUM,
        pyspiel.GameType.Utility.CONSTANT_SUM,
    )


def _check(cfg: Any) -> None:
    """The errors a ``marl search`` config can hold that the schema does not catch, found
    before a run directory exists."""
    from omegaconf import OmegaConf

    from marl.errors import ConfigError

    name, kwargs = str(cfg.env.name), dict(cfg.env.kwargs)
    if cfg.env.kind == "openspiel":
        if cfg.blueprint != "uniform":
            raise ConfigError("OpenSpiel games take blueprint=uniform")
        from marl.agents.search_openspiel import load_game

        game = load_game(openspiel_game_string(name, kwargs))
        if game.num_players() != 2:
            raise ConfigError(
                f"search plays two-player OpenSpiel games; {name} has {game.num_players()}"
            )
        if cfg.iterations > 0 and not _zero_sum(game):
            raise ConfigError(
                "iterations > 0 on OpenSpiel games needs a zero-sum game "
                "(the curve is exploitability)"
            )
        return
    _belief_for(name)
    tiny = name.startswith("tiny_hanabi/")
    if not tiny and (cfg.search.samples == 0 or cfg.search.rollouts == 0):
        raise ConfigError(
            f"samples=0 (exact belief) and rollouts=0 (exact values) are for tiny Hanabi and "
            f"OpenSpiel games; {name} takes samples >= 1 and rollouts >= 1"
        )
    if cfg.iterations > 0 and (not tiny or cfg.blueprint != "uniform"):
        raise ConfigError(
            "iterations > 0 takes tiny Hanabi from the uniform blueprint (or an OpenSpiel game)"
        )
    if cfg.search.players is not None:
        from marl import envs

        n = envs.make_array_env(name, **kwargs).spec.num_agents
        bad = [p for p in cfg.search.players if not 0 <= p < n]
        if bad:
            raise ConfigError(f"search.players: {bad} not among the seats 0..{n - 1}")
    if cfg.blueprint != "uniform":
        run = Path(cfg.blueprint)
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"blueprint {run} is not a run directory (no config.yaml)")
        env = OmegaConf.load(run / "config.yaml").get("env", {})
        trained = (env.get("name"), dict(env.get("kwargs") or {}))
        if trained != (name, kwargs):
            raise ConfigError(
                f"blueprint {run} was trained on {trained[0]} {trained[1] or ''}".rstrip()
                + f", not on {name} {kwargs or ''}".rstrip()
            )
        if not any((run / "checkpoints").glob("*")):
            raise ConfigError(f"blueprint {run} has no checkpoints")


def run_search(cfg: Any) -> Path:
    """``marl search``: evaluation games with search and with the blueprint alone on one
    environment; writes a run directory (``config.yaml``, ``eval.jsonl`` per batch of games,
    ``final.json``) and a W&B run with job type ``search``. Returns the run directory."""
    import json
    import shutil

    from marl.config import to_dict
    from marl.errors import MarlError
    from marl.runlog import RunLogger, new_run_dir
    from marl.trainer import Progress

    sc = search_config(cfg)
    _check(cfg)  # fail before a run directory exists
    env_tag = str(cfg.env.name).replace("/", "_")
    experiment = cfg.experiment or f"search-{sc.kind}-{env_tag}"
    run_dir = new_run_dir(cfg.logger.root, experiment)
    wandb = dict(to_dict(cfg.logger.wandb))
    wandb["tags"] = list(wandb.get("tags") or []) + [f"search={sc.kind}", f"env={cfg.env.name}"]
    try:
        with (
            RunLogger(run_dir, to_dict(cfg), 1, wandb=wandb) as logger,
            Progress(bool(cfg.logger.progress), int(cfg.episodes), 0, "search") as progress,
        ):
            play = _play_openspiel if cfg.env.kind == "openspiel" else _play_jax
            result = play(cfg, sc, logger, progress)
            final = {"env": str(cfg.env.name), "blueprint": str(cfg.blueprint), **_flat(result)}
            logger.write_final(final)
    except MarlError:
        # a user error found late (a corrupt checkpoint): no games played, no run to keep
        if not (run_dir / "eval.jsonl").is_file():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    summary = {k: v for k, v in final.items() if not k.startswith("scores/")}
    print(json.dumps(summary, indent=2))
    return run_dir


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """``{"score/search": {"mean": m, "ci_low": l}}`` -> ``{"score/search": m,
    "score/search_ci_low": l}`` (W&B summaries take scalars)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and "mean" in v:
            out[k] = v["mean"]
            out.update({f"{k}_{s}": x for s, x in v.items() if s != "mean"})
        elif isinstance(v, dict):
            out.update({f"{k}/{s}": x for s, x in v.items()})
        else:
            out[k] = v
    return out
