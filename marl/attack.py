"""Adversarial attacks on a trained team: ``marl attack`` and ``marl attack-eval``.

A cooperative team trained with ``marl train`` (any algorithm, a pure-JAX discrete
environment) is loaded from its run directory and frozen; one agent slot is handed to an
attacker. The attack is an ordinary array environment, ``env=attack``
(:class:`AttackEnv`): one agent, the adversary, sees its slot's observation and legal actions
and gets the negated team reward; the victims act inside the environment's step with their
own policy and parameters. So any trainer path (checkpoints, resume, sweeps, W&B) trains an
attacker: Gleave et al.'s attack is plain MAPPO on this environment, AMI
(:mod:`marl.agents.ami`) adds its victim model, oracle and influence reward through the PPO
core's ``prepare`` hook.

Black-box, by construction: the victims are a :class:`VictimTeam`, whose only method the
environment calls is ``act`` (observations in, actions out, under ``stop_gradient``); the
attacker's learners see the environment's time steps, which carry the global state, the
victims' observed actions and legal actions, and the team's reward negated, nothing of the
victims' parameters, gradients or per-agent rewards.

The attack environment's global state (:class:`marl.envs.core.AttackLayout`) appends to the
base state the victims' actions of the step (one-hot; they act simultaneously with the
adversary, so the adversary's own policy never sees them: its actor reads its observation
only), every agent's legal actions and which victims the adversary can see (SMAX: within its
unit's sight range; MPE: all).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from omegaconf import DictConfig, OmegaConf

from marl.errors import ConfigError, first_line

# who plays the adversary's slot: the attacker, uniform legal actions, the team's own policy
ATTACK_MODES = ("adversary", "random", "clean")
# `marl attack` keys of the attack config (configs/attack_run.yaml); the rest is training's
VICTIM_KEYS = ("victims", "adversary_slot", "victim_step", "victim_seed", "victim_greedy")


# ------------------------------------------------------------------------------ victims
class VictimTeam:
    """A frozen team, called as a policy only: ``act(hidden, inp, key) -> (hidden, actions)``.

    The parameters stay private to this object and enter :meth:`act` under
    ``stop_gradient``: nothing outside can differentiate through them or update them.
    """

    def __init__(self, policy: Any, params: Any, greedy: bool = False):
        import jax
        import jax.numpy as jnp

        self._policy = policy
        self.__params = jax.tree.map(jnp.asarray, params)
        self.greedy = bool(greedy)
        self.recurrent = bool(getattr(policy, "recurrent", False))

    def initial_hidden(self, num_envs: int) -> Any:
        return self._policy.initial_hidden(num_envs)

    def act(self, hidden: Any, inp: Any, key: Any) -> tuple[Any, Any]:
        """One step of the whole team for ``inp [1, E, A, ...]``: ``(hidden, actions [E, A])``."""
        import jax

        params = jax.lax.stop_gradient(self.__params)
        hidden, actions, _, _ = self._policy.act(params, hidden, inp, key, self.greedy)
        return hidden, jax.lax.stop_gradient(actions[0])


def victim_config(victims: str | Path) -> DictConfig:
    """The validated config of the victims' run; a missing or unusable run is one
    :class:`ConfigError` line."""
    from marl.config import validate

    path = Path(victims)
    if not path.is_dir():
        raise ConfigError(f"victims={victims}: no such run directory")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"victims={victims}: not a run directory (no config.yaml)")
    try:
        cfg = validate(OmegaConf.load(path / "config.yaml"))
    except ConfigError as err:
        raise ConfigError(
            f"victims={victims}: its config is not a training config: {err}"
        ) from None
    except Exception as err:  # a garbled YAML file
        raise ConfigError(
            f"victims={victims}: config.yaml cannot be read: {first_line(err)}"
        ) from None
    if cfg.env.name == "attack":
        raise ConfigError(f"victims={victims} is an attack run; give the team's training run")
    if cfg.env.kind != "jax":
        raise ConfigError(
            f"victims={victims} trained on env.kind={cfg.env.kind}: attacks run on pure-JAX "
            "environments"
        )
    return cfg


def load_victims(
    victims: str | Path, step: int | None = None, seed: int = 0, greedy: bool = False
) -> tuple[DictConfig, Any, VictimTeam]:
    """``(victims' config, their environment (array view), the frozen team)`` from a run
    directory: the checkpoint's parameters of seed ``seed`` (last checkpoint, or ``step``)."""
    import jax

    from marl.checkpoint import CheckpointError
    from marl.evaluate import _restore_params
    from marl.trainer import Trainer

    cfg = victim_config(victims)
    path = Path(victims)
    if not (path / "checkpoints").is_dir():
        raise ConfigError(f"victims={victims}: the run has no checkpoints")
    if not 0 <= seed < cfg.num_seeds:
        raise ConfigError(
            f"victim_seed={seed}: the victims' run trained {cfg.num_seeds} seed(s) "
            f"(0..{cfg.num_seeds - 1})"
        )
    trainer = Trainer(cfg, None)
    spec = trainer.spec
    if spec.turn_based:
        raise ConfigError(
            f"victims={victims}: {spec.name} is turn-based; attacks need simultaneous moves"
        )
    if spec.heterogeneous or spec.games:
        raise ConfigError(
            f"victims={victims}: {spec.name} has agents of different shapes or several "
            "games; attacks need one team of same-shaped agents"
        )
    try:
        params, _ = _restore_params(trainer, path, step)
    except CheckpointError as err:
        raise ConfigError(f"victims={victims}: {err}") from None
    params = jax.tree.map(lambda x: np.asarray(x[seed]), params)
    return cfg, trainer.env, VictimTeam(trainer.policy, params, greedy)


# ------------------------------------------------------------------------------ environment
class AttackState(NamedTuple):
    base: Any  # the base environment's batch state
    ts: Any  # its last time step [E, A, ...]
    hidden: Any  # the victims' recurrent state
    actions: Any  # [E, A] the victims' actions for the next step (they act simultaneously)


def _smax_visible(base: Any, env_state: Any, slot: int) -> Any:
    """``[E, A]``: allies within the sight range of the adversary's unit (both alive)."""
    import jax.numpy as jnp

    s = env_state.env_state.state  # ArrayEnvState -> EnemySMAX state -> SMAX state
    A = base.spec.num_agents
    pos = s.unit_positions[:, :A]
    alive = s.unit_alive[:, :A]
    sight = base.env.unit_type_sight_ranges[s.unit_types[:, slot]]
    dist = jnp.linalg.norm(pos - pos[:, slot : slot + 1], axis=-1)
    return ((dist < sight[:, None]) & alive & alive[:, slot : slot + 1]).astype(jnp.float32)


class AttackEnv:
    """One slot of a trained team played by an adversary (see the module docstring).

    ``mode``: ``adversary`` (the adversary's actions are played), ``random`` (uniform legal
    actions are played, whatever the adversary chose: the random baseline) or ``clean``
    (the victims' own policy plays the slot: the unattacked team).
    """

    def __init__(self, base: Any, victims: VictimTeam, slot: int, mode: str = "adversary"):
        from marl.envs.core import AttackLayout, EnvSpec

        bs = base.spec
        A = bs.num_agents
        if A < 2:
            raise ConfigError(f"{bs.name} has one agent: an attack needs a team")
        if not 0 <= slot < A:
            raise ConfigError(f"adversary_slot={slot} is not an agent of {bs.name} (0..{A - 1})")
        if mode not in ATTACK_MODES:
            raise ConfigError(f"attack mode {mode!r} is not one of {', '.join(ATTACK_MODES)}")
        self.base, self.victims, self.slot, self.mode = base, victims, slot, mode
        self.discrete = bs.action_type == "discrete"
        self.layout = AttackLayout(bs.state_dim, A, bs.num_actions, slot, not self.discrete)
        self.smax = bs.name.startswith("smax/")
        bounds = {}
        if not self.discrete:
            bounds = {"action_low": (bs.action_low[slot],), "action_high": (bs.action_high[slot],)}
            self._low = np.asarray(bs.action_low[slot], np.float32)
            self._high = np.asarray(bs.action_high[slot], np.float32)
        self.spec = EnvSpec(
            name=f"attack[{bs.name}]",
            agents=(bs.agents[slot],),
            obs_sizes=(bs.obs_dim,),  # the slot's observation as the victims' policy sees it
            agent_id=False,
            action_type=bs.action_type,
            action_sizes=(bs.num_actions,),
            state_dim=self.layout.state_dim,
            state_source="env",
            max_steps=bs.max_steps,
            has_win=bs.has_win,
            attack=self.layout,
            **bounds,
        )

    # ------------------------------------------------------------------ the view
    def _view(self, ts: Any, state: Any, actions: Any) -> Any:
        import jax
        import jax.numpy as jnp

        from marl.envs.core import TimeStep

        s, L = self.slot, self.layout
        E = ts.episode_done.shape[0]
        victims = (jnp.arange(L.num_agents) != s).astype(jnp.float32)
        n_v = victims.sum()
        team_reward = (ts.reward * victims).sum(-1) / n_v
        team_return = (ts.episode_return * victims).sum(-1) / n_v
        if self.discrete:
            acts = jax.nn.one_hot(actions, L.num_actions) * victims[:, None]
        else:  # the action vectors, clipped to the bounds as the environment plays them
            low, high = self.base._low, self.base._high  # noqa: SLF001
            acts = jnp.clip(actions, low, high) * victims[:, None]
        if self.smax:
            visible = _smax_visible(self.base, state, s)
        else:
            visible = jnp.ones((E, L.num_agents), jnp.float32)
        visible = visible * victims
        full = jnp.concatenate(
            [
                ts.state,
                acts.reshape(E, -1),
                ts.avail_actions.reshape(E, -1).astype(jnp.float32),
                visible,
            ],
            axis=-1,
        )
        one = slice(s, s + 1)
        return TimeStep(
            obs=ts.obs[:, one],
            avail_actions=ts.avail_actions[:, one],
            state=full,
            reward=-team_reward[:, None],
            done=ts.done[:, one],
            episode_done=ts.episode_done,
            truncated=ts.truncated,
            alive=ts.alive[:, one],
            episode_return=-team_return[:, None],
            episode_length=ts.episode_length,
            episode_won=ts.episode_won,
        )

    def _victims_act(self, key, hidden, ts, first):
        from marl.rollout import policy_input

        return self.victims.act(hidden, policy_input(ts, first), key)

    # ------------------------------------------------------------------ batches
    def reset_batch(self, key: Any, num_envs: int) -> tuple[AttackState, Any]:
        import jax
        import jax.numpy as jnp

        k_env, k_vic = jax.random.split(key)
        state, ts = self.base.reset_batch(k_env, num_envs)
        hidden, actions = self._victims_act(
            k_vic, self.victims.initial_hidden(num_envs), ts, jnp.ones((num_envs,), bool)
        )
        return AttackState(state, ts, hidden, actions), self._view(ts, state, actions)

    def step_batch(self, key: Any, state: AttackState, action: Any) -> tuple[AttackState, Any]:
        """Step every copy with the adversary's actions ``[E, 1]``."""
        import jax

        k_rand, k_env, k_vic = jax.random.split(key, 3)
        s = self.slot
        adv = action[:, 0]
        if self.mode == "random":
            adv = self.random_actions(k_rand, state.ts.avail_actions[:, s : s + 1])[:, 0]
        elif self.mode == "clean":
            adv = state.actions[:, s]
        joint = state.actions.at[:, s].set(adv)
        base, ts = self.base.step_batch(k_env, state.base, joint)
        hidden, actions = self._victims_act(k_vic, state.hidden, ts, ts.episode_done)
        return AttackState(base, ts, hidden, actions), self._view(ts, base, actions)

    def random_actions(self, key: Any, avail_actions: Any) -> Any:
        """Uniform legal actions of the adversary's slot, ``avail_actions [..., 1, nA]``."""
        if self.discrete:
            return self.base.random_actions(key, avail_actions)
        import jax

        u = jax.random.uniform(key, avail_actions.shape)
        return self._low + u * (self._high - self._low)


def make_attack_env(
    *,
    agent_id: bool = False,
    victims: str | None = None,
    slot: int = 0,
    step: int | None = None,
    seed: int = 0,
    greedy: bool = False,
    mode: str = "adversary",
) -> AttackEnv:
    """The registry's ``attack`` entry: ``env.kwargs.victims=<run dir>`` and the rest."""
    del agent_id  # one agent: its observation is the slot's, with the team's agent id
    if not victims:
        raise ConfigError("env=attack needs env.kwargs.victims=<run dir of the trained team>")
    for name, v in (("slot", slot), ("seed", seed)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"env.kwargs.{name} must be an integer, got {v!r}")
    _, base, team = load_victims(victims, step, seed, greedy)
    return AttackEnv(base, team, slot, mode)


# ------------------------------------------------------------------------------ the command
@dataclass
class AttackPlan:
    """What ``marl attack`` runs: the attack config and the training config it makes."""

    attack: DictConfig
    train: DictConfig
    victims_cfg: DictConfig
    overrides: list[str]  # the overrides that compose ``train``
    victim_step: int  # the victims' checkpoint, pinned (the newest when the attack started)


def _split(overrides: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``(attack keys, expected-environment keys, training keys)`` of the overrides."""
    attack, env, rest = [], [], []
    for o in overrides:
        key = o.partition("=")[0].lstrip("+~")
        if key == "attack" or key.startswith("attack.") or key in VICTIM_KEYS:
            attack.append(o)
        elif key == "env" or key.startswith("env."):
            env.append(o)
        else:
            rest.append(o)
    return attack, env, rest


def _check_expected_env(env_overrides: list[str], vcfg: DictConfig, victims: str) -> None:
    """``env=...`` on ``marl attack`` names the environment the victims must come from."""
    if not env_overrides:
        return
    from marl import envs
    from marl.config import compose

    want = compose(env_overrides).env
    kw = OmegaConf.to_container(vcfg.env.kwargs, resolve=True)
    want_kw = OmegaConf.to_container(want.kwargs, resolve=True)
    if want.name != vcfg.env.name:
        raise ConfigError(f"victims={victims} were trained on {vcfg.env.name}, not {want.name}")
    n_have = len(envs.make(vcfg.env.name, **kw).agents)
    n_want = len(envs.make(want.name, **want_kw).agents)
    if n_have != n_want:
        raise ConfigError(
            f"victims={victims} are a team of {n_have} agents; the attack asks for {n_want} "
            f"({want.name} {want_kw})"
        )


def _value(v: Any) -> str:
    """A Hydra override value: null, a number or boolean as is, a string quoted."""
    if v is None:
        return "null"
    if isinstance(v, bool | int | float):
        return str(v).lower() if isinstance(v, bool) else str(v)
    return "'" + str(v).replace("'", "\\'") + "'"


def plan_attack(overrides: list[str]) -> AttackPlan:
    """Compose and validate ``marl attack``'s overrides: the attack config (Hydra group
    ``configs/attack/``, victims), and the training config of the attacker."""
    from marl.config import compose, compose_attack
    from marl.trainer import experiment_name

    a_over, env_over, rest = _split(overrides)
    acfg = compose_attack(a_over)
    if not acfg.victims:
        raise ConfigError("marl attack needs victims=<run dir of the trained team>")
    victims = str(Path(acfg.victims).resolve())
    vcfg = victim_config(acfg.victims)
    _check_expected_env(env_over, vcfg, acfg.victims)
    step = acfg.victim_step
    if step is None:  # pinned: a team still training must not change under the attack
        from marl.checkpoint import Checkpointer

        with Checkpointer(Path(victims) / "checkpoints", read_only=True) as ckpt:
            step = ckpt.latest_step()
        if step is None:
            raise ConfigError(f"victims={acfg.victims}: the run has no checkpoints")
    group = vcfg.logger.wandb.group or experiment_name(vcfg)
    kw = {
        "victims": victims,
        "slot": acfg.adversary_slot,
        "step": step,
        "seed": acfg.victim_seed,
        "greedy": acfg.victim_greedy,
        "mode": acfg.attack.mode,
    }
    train_over = [
        f"algo={acfg.attack.algo or 'mappo'}",
        *acfg.attack.algo_overrides,
        "env=attack",
        *(f"env.kwargs.{k}={_value(v)}" for k, v in kw.items()),
        "eval.video=false",
        "logger.wandb.job_type=attack",
        f"logger.wandb.group={group}",
        f"logger.wandb.tags=['attack={acfg.attack.name}','victims={Path(victims).name}']",
        f"experiment=attack-{experiment_name(vcfg)}",
        *rest,
    ]
    return AttackPlan(acfg, compose(train_over), vcfg, train_over, int(step))


def run_attack(overrides: list[str]) -> Path:
    """``marl attack ...``: train the attacker (or not: ``random``, ``none``), then evaluate
    the attacked team; returns the attack run directory."""
    from marl.config import compose
    from marl.runlog import new_run_dir
    from marl.trainer import train

    resume = [o for o in overrides if o.partition("=")[0] == "resume"]
    if resume:
        if len(overrides) > 1:
            raise ConfigError("marl attack resume=<dir> takes no other overrides")
        run_dir = Path(resume[0].partition("=")[2])
        meta_path = run_dir / "attack.json"
        if not meta_path.is_file():
            raise ConfigError(f"resume={run_dir}: not an attack run (no attack.json)")
        meta = json.loads(meta_path.read_text())
        if meta["algo"] is not None:
            train(compose([f"resume={run_dir}"]))
        report_evaluation(run_dir)
        return run_dir
    plan = plan_attack(overrides)
    cfg, a = plan.train, plan.attack
    from marl.trainer import Schedule, _check_minibatches

    if a.attack.algo is not None:
        Schedule.of(cfg)
        _check_minibatches(cfg)
    run_dir = new_run_dir(Path(cfg.logger.root), cfg.experiment)
    meta = {
        "attack": a.attack.name,
        "algo": a.attack.algo,
        "mode": a.attack.mode,
        "victims": str(Path(a.victims).resolve()),
        "victims_env": plan.victims_cfg.env.name,
        "victims_algo": plan.victims_cfg.algo.name,
        "adversary_slot": a.adversary_slot,
        "victim_seed": a.victim_seed,
        "victim_step": plan.victim_step,
        "victim_greedy": a.victim_greedy,
    }
    (run_dir / "attack.json").write_text(json.dumps(meta, indent=2) + "\n")
    try:
        if a.attack.algo is not None:
            train(cfg, run_dir=run_dir)
        else:
            _evaluate_only(cfg, run_dir)  # the evaluation is the attack
            return run_dir
    except ConfigError:
        if not any(p.name != "attack.json" for p in run_dir.iterdir()):
            (run_dir / "attack.json").unlink()
            run_dir.rmdir()
        raise
    report_evaluation(run_dir)
    return run_dir


def _evaluate_only(cfg: DictConfig, run_dir: Path) -> None:
    """An attack without an attacker to train (``random``, ``none``): its evaluation
    (:func:`report_evaluation`) also makes the run directory's ``final.json`` and W&B run, as
    a trained attack writes them."""
    from marl.config import to_dict
    from marl.runlog import RunLogger
    from marl.trainer import Trainer, eval_rows

    trainer = Trainer(cfg, run_dir)
    wb = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
    with RunLogger(run_dir, to_dict(cfg), trainer.S, wandb=wb) as logger:
        res = report_evaluation(run_dir, trainer)
        ret = -np.asarray(res["team_return"])  # the adversary's return
        won = np.asarray(res["won"] if res["won"] is not None else np.zeros_like(ret))
        rows = eval_rows(ret, np.asarray(res["length"]), won, 0, 0, trainer.spec.has_win)
        logger.log_eval(rows)
        absolute = [
            {k: r[k] for k in r if k.startswith("eval/") or k in ("seed", "episodes")} for r in rows
        ]
        logger.write_final({"absolute": absolute, "final": rows, "env_steps": 0, "updates": 0})


def report_evaluation(run_dir: Path, trainer: Any = None) -> dict[str, Any]:
    """Evaluate the attack run's best adversary (``eval.episodes x eval.absolute_factor``
    episodes per seed, the victims sampling their actions unless ``victim_greedy``) and keep
    every episode's team return and win in ``<run>/attack_eval.json`` for ``marl
    attack-eval``. ``trainer``: the run's, when the caller has built it."""
    import jax

    from marl.config import validate
    from marl.evaluate import _restore_params
    from marl.trainer import Trainer

    meta = json.loads((run_dir / "attack.json").read_text())
    if trainer is None:
        trainer = Trainer(validate(OmegaConf.load(run_dir / "config.yaml")), run_dir)
    cfg = trainer.cfg
    if meta["algo"] is not None:
        params, _ = _restore_params(trainer, run_dir, None, best=True)
    else:  # nothing trained: the adversary's actions are not played
        params = trainer.init_runner().train.params
    n = cfg.eval.episodes * cfg.eval.absolute_factor
    t0 = time.perf_counter()
    ret, length, won = trainer.evaluate(
        params, jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 515151), n
    )
    team = -np.asarray(ret)  # the attack environment's return is the negated team return
    result = {
        **meta,
        "run_dir": str(run_dir),
        "episodes_per_seed": n,
        "greedy_adversary": bool(cfg.eval.greedy),
        "has_win": trainer.spec.has_win,
        "team_return": team.tolist(),
        "won": np.asarray(won, float).tolist() if trainer.spec.has_win else None,
        "length": np.asarray(length, float).tolist(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (run_dir / "attack_eval.json").write_text(json.dumps(result) + "\n")
    print(
        f"{meta['attack']}: team return {team.mean():.3f}"
        + (f", victims' win rate {np.mean(won):.3f}" if trainer.spec.has_win else ""),
        file=sys.stderr,
    )
    return result


# ------------------------------------------------------------------------------ the report
def _ci(per_seed: list[list[float]]) -> tuple[float, float, float]:
    """Mean and 95% stratified-bootstrap interval over seeds and episodes (episodes
    resampled within each seed, seeds averaged)."""
    from marl.stats import stratified_bootstrap_ci

    iv = stratified_bootstrap_ci(per_seed, "mean", reps=2000, rng=0)
    return iv.point, iv.low, iv.high


# what makes two attack runs attacks on the same team, the same way
TEAM_KEYS = ("victims", "victim_step", "victim_seed", "adversary_slot", "victim_greedy")


def _team_key(r: dict) -> tuple:
    return tuple(r[k] for k in TEAM_KEYS)


def attack_report(run_dirs: list[str | Path]) -> dict[str, Any]:
    """One row per attacked team (victims' run, checkpoint, seed, adversary slot, greedy or
    sampling victims) and attack over the attack runs' ``attack_eval.json``: the victims'
    win rate and team return with 95% intervals, the adversary's return and the drop
    against the clean team (``attack=none``) of the same team."""
    groups: dict[tuple, list[dict]] = {}
    for d in run_dirs:
        path = Path(d) / "attack_eval.json"
        if not path.is_file():
            raise ConfigError(f"{d} is not an evaluated attack run (no attack_eval.json)")
        r = json.loads(path.read_text())
        groups.setdefault((*_team_key(r), r["attack"]), []).append(r)
    rows = []
    for (*team_key, attack), runs in groups.items():
        team = [ep for r in runs for ep in r["team_return"]]
        row: dict[str, Any] = {
            **dict(zip(TEAM_KEYS, team_key, strict=True)),
            "victims_env": runs[0]["victims_env"],
            "attack": attack,
            "runs": len(runs),
            "seeds": len(team),
            "episodes": sum(len(s) for s in team),
        }
        row["team_return"], row["team_return_low"], row["team_return_high"] = _ci(team)
        adv = [[-x for x in s] for s in team]
        row["adversary_return"] = float(np.mean([np.mean(s) for s in adv]))
        if runs[0]["has_win"]:
            wins = [ep for r in runs for ep in r["won"]]
            row["win_rate"], row["win_rate_low"], row["win_rate_high"] = _ci(wins)
        rows.append(row)
    clean = {_team_key(r): r for r in rows if r["attack"] == "none"}
    for r in rows:
        c = clean.get(_team_key(r))
        if c is not None:
            r["team_return_drop"] = c["team_return"] - r["team_return"]
            if "win_rate" in r:
                r["win_rate_drop"] = c["win_rate"] - r["win_rate"]
    order = {"none": 0, "random": 1, "gleave": 2, "ami": 3}
    rows.sort(key=lambda r: (r["victims_env"], *map(str, _team_key(r)), order.get(r["attack"], 9)))
    return {"rows": rows}


def _team_label(r: dict) -> str:
    greedy = ", greedy" if r["victim_greedy"] else ""
    return (
        f"{r['victims_env']} ({Path(r['victims']).name} step {r['victim_step']}, "
        f"slot {r['adversary_slot']}{greedy})"
    )


def report_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table."""
    lines = [
        "| victims | attack | win rate [95% CI] | team return [95% CI] | drop (win / return) "
        "| adversary return | seeds x episodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        win = (
            f"{r['win_rate']:.3f} [{r['win_rate_low']:.3f}, {r['win_rate_high']:.3f}]"
            if "win_rate" in r
            else "-"
        )
        drop = "-"
        if "team_return_drop" in r:
            win_drop = f"{r['win_rate_drop']:+.3f}" if "win_rate_drop" in r else "-"
            drop = f"{win_drop} / {r['team_return_drop']:+.3f}"
        lines.append(
            f"| {_team_label(r)} | {r['attack']} | {win} | "
            f"{r['team_return']:.3f} [{r['team_return_low']:.3f}, {r['team_return_high']:.3f}]"
            f" | {drop} | {r['adversary_return']:.3f} | {r['seeds']} x "
            f"{r['episodes'] // max(r['seeds'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Bars of the victims' win rate (or team return) per attack, with 95% intervals, one
    panel per victim team."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teams = list(dict.fromkeys(_team_key(r) for r in report["rows"]))
    fig, axes = plt.subplots(1, len(teams), figsize=(4 * len(teams), 3.2), squeeze=False)
    for ax, team in zip(axes[0], teams, strict=True):
        rows = [r for r in report["rows"] if _team_key(r) == team]
        key = "win_rate" if all("win_rate" in r for r in rows) else "team_return"
        y = np.array([r[key] for r in rows])
        err = np.array(
            [[r[key] - r[f"{key}_low"] for r in rows], [r[f"{key}_high"] - r[key] for r in rows]]
        )
        ax.bar(range(len(rows)), y, yerr=err, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(rows)), [r["attack"] for r in rows], rotation=30)
        ax.set_ylabel(f"victims' {key.replace('_', ' ')}")
        ax.set_title(_team_label(rows[0]).replace(" (", "\n("), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def attack_eval(
    run_dirs: list[str | Path], out: str | Path | None = None, wandb_mode: str = "offline"
) -> dict[str, Any]:
    """``marl attack-eval``: the report as a table (printed), ``attack_report.json``,
    ``attack_report.md`` and ``attack_report.png`` in ``out`` (default: the first run's
    experiment directory), and a W&B run (job type ``attack-eval``) with the table and
    the figure."""
    if not run_dirs:
        raise ConfigError("marl attack-eval needs attack run directories")
    report = attack_report(run_dirs)
    out = Path(out) if out else Path(run_dirs[0]).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "attack_report.json").write_text(json.dumps(report, indent=2) + "\n")
    md = report_markdown(report)
    (out / "attack_report.md").write_text(md)
    png = plot_report(report, out / "attack_report.png")
    report["out"] = str(out)
    if wandb_mode != "disabled":
        _log_report(report, png, out, wandb_mode, run_dirs)
    print(md, end="")
    return report


def _log_report(report: dict, png: Path, out: Path, mode: str, run_dirs: list) -> None:
    """The report's table and figure in a W&B run of the victims' group; a failure warns."""
    try:
        import wandb

        cfg = OmegaConf.load(Path(run_dirs[0]) / "config.yaml")
        cols = sorted({k for r in report["rows"] for k in r})
        table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in report["rows"]])
        run = wandb.init(
            project=cfg.logger.wandb.project,
            entity=cfg.logger.wandb.entity,
            group=cfg.logger.wandb.group,
            job_type="attack-eval",
            name=f"attack-report-{time.strftime('%Y%m%d-%H%M%S')}",
            dir=str(out),
            mode=mode,
            config={"runs": [str(d) for d in run_dirs]},
            reinit="create_new",
        )
        run.log({"attack/report": table, "attack/figure": wandb.Image(str(png))})
        for r in report["rows"]:
            for k in ("win_rate", "team_return", "win_rate_drop", "team_return_drop"):
                if k in r:
                    run.summary[f"{Path(r['victims']).name}/{r['attack']}/{k}"] = r[k]
        run.finish()
    except Exception as err:  # the report files are written; W&B is an extra
        print(f"W&B report not logged: {type(err).__name__}: {err}", file=sys.stderr)
