"""W&B dashboards as code: ``marl dashboard <experiment or sweep>``.

Builds a W&B workspace (``wandb-workspaces``) for the runs of an experiment folder
(``runs/<experiment>``), a sweep directory (``marl train -m``) or run directories: learning
curves of ``eval/episode_return`` and ``train/episode_return`` against ``env_steps`` grouped
by algorithm (a sweep: by its swept settings), the win rate where the environment has one,
the losses, the training speed, and the comparison table of ``marl compare``. The runset
shows only the runs of those W&B groups (job type ``train``).

Offline (the default, like every run), it writes the workspace's specification, exactly as
it would be uploaded, to ``dashboard.json`` next to the runs and prints how to publish it;
``--publish`` uploads it (after ``wandb sync`` of the runs, with ``WANDB_API_KEY`` set).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marl.errors import MarlError, first_line

DASHBOARD_FILE = "dashboard.json"
RETURN_PANELS = ("eval/episode_return", "train/episode_return")


@dataclass
class Dashboard:
    """A workspace to upload and what it was built from."""

    workspace: Any  # wandb_workspaces.workspaces.Workspace
    entity: str | None
    project: str
    groups: list[str]
    group_by: list[str]
    sections: dict[str, list[str]] = field(default_factory=dict)  # section -> panel titles

    def spec(self) -> dict[str, Any]:
        """The view W&B stores for this workspace (what :meth:`publish` uploads)."""
        view = self.workspace._to_model()
        return json.loads(view.model_dump_json(by_alias=True, exclude_none=True))

    def publish(self) -> str:
        """Upload the workspace (needs a W&B login); returns its URL."""
        if not self.workspace.entity:  # logger.wandb.entity unset: the login's default
            import wandb

            self.workspace.entity = wandb.Api().default_entity
        self.workspace.save()
        return str(self.workspace.url)


def _group_of(run: Any) -> str:
    wb = (run.config.get("logger") or {}).get("wandb") or {}
    return str(wb.get("group") or run.experiment)


def _logged_keys(runs: list[Any], prefixes: tuple[str, ...]) -> list[str]:
    keys: dict[str, None] = {}
    for r in runs:
        for row in r.metrics[:1] + r.evals[:1]:
            for k in row:
                if k.startswith(prefixes):
                    keys[k] = None
    return sorted(keys)


def build(paths: list[str | Path], name: str | None = None) -> Dashboard:
    """The dashboard of the runs named by ``paths`` (run directories, experiment folders or
    sweep directories).

    Raises:
        MarlError: a path holds no run, or the runs log to different W&B projects.
    """
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    from marl.compare import _sweep_jobs, compare, expand_run_dirs, load_run, render_markdown
    from marl.sweep import REPEAT_KEYS, is_sweep

    run_dirs, labels, _ = _sweep_jobs(paths)
    runs = [load_run(p) for p in expand_run_dirs(run_dirs)]
    projects = {((r.config.get("logger") or {}).get("wandb") or {}).get("project") for r in runs}
    entities = {((r.config.get("logger") or {}).get("wandb") or {}).get("entity") for r in runs}
    if len(projects) > 1 or len(entities) > 1:
        raise MarlError(
            f"the runs log to different W&B projects ({sorted(map(str, projects))}); "
            "build one dashboard per project"
        )
    project = str(projects.pop() or "marl")
    entity = entities.pop()
    groups = sorted({_group_of(r) for r in runs})

    swept: list[str] = []
    for p in paths:
        if is_sweep(p):
            meta = json.loads((Path(p) / "sweep.json").read_text())
            swept += [k for k in meta["swept"] if k not in REPEAT_KEYS and k not in swept]
    group_by = swept or ["algo.name"]
    # the config keys W&B groups by (a swept group such as `algo` is its name: algo.name)
    group_by = [f"{k}.name" if k in ("algo", "env") else k for k in group_by]
    panel_group = group_by[0] if len(group_by) == 1 else None

    def curve(title: str, metric: str) -> Any:
        return wr.LinePlot(
            title=title,
            x="env_steps",
            y=[metric],
            groupby=panel_group,
            groupby_aggfunc="mean",
            groupby_rangefunc="stderr",
        )

    sections: dict[str, list[Any]] = {
        "Returns": [curve(m, m) for m in RETURN_PANELS],
    }
    has_win = any(
        r.get("eval/win_rate") is not None
        for run in runs
        for r in [*run.evals, *((run.final or {}).get("final") or [])]
        if isinstance(r, dict)
    )
    if has_win:
        sections["Win rate"] = [curve("eval/win_rate", "eval/win_rate")]
    losses = _logged_keys(runs, ("loss/",))
    sections["Losses"] = [curve(k, k) for k in losses]
    speed = [k for k in _logged_keys(runs, ("perf/",)) if k != "perf/elapsed_s"]
    sections["Speed"] = [curve(k, k) for k in speed]
    try:
        table = render_markdown(compare(paths, write=False))
    except MarlError as err:  # e.g. no evaluation yet: say so in the panel
        table = f"No comparison yet: {err}"
    command = "marl compare " + " ".join(str(p) for p in paths)
    sections["Comparison"] = [wr.MarkdownPanel(markdown=f"{table}\n\nFrom `{command}`.")]

    title = name or f"marl: {', '.join(groups)}"[:120]
    workspace = ws.Workspace(
        entity=entity or "",
        project=project,
        name=title,
        sections=[
            ws.Section(name=s, panels=panels, is_open=True)
            for s, panels in sections.items()
            if panels
        ],
        settings=ws.WorkspaceSettings(x_axis="env_steps", max_runs=max(10, len(runs))),
        runset_settings=ws.RunsetSettings(
            filters=[ws.Metric("Group").isin(groups), ws.Metric("JobType") == "train"],
            groupby=[ws.Config(k) for k in group_by],
        ),
    )
    titles = {
        s: [getattr(p, "title", None) or type(p).__name__ for p in panels]
        for s, panels in sections.items()
        if panels
    }
    return Dashboard(workspace, entity, project, groups, group_by, titles)


def _out_path(paths: list[str | Path], out: str | None) -> Path:
    if out:
        return Path(out)
    first = Path(paths[0])
    return (first if len(paths) == 1 and first.is_dir() else Path(".")) / DASHBOARD_FILE


def cli(
    paths: list[str], out: str | None = None, publish: bool = False, name: str | None = None
) -> int:
    """``marl dashboard``: write the workspace spec (and upload it with ``publish``)."""
    board = build(paths, name)
    path = _out_path(paths, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "entity": board.entity,
        "project": board.project,
        "groups": board.groups,
        "group_by": board.group_by,
        "sections": board.sections,
        "view": board.spec(),
    }
    path.write_text(json.dumps(doc, indent=2))
    print(f"dashboard: {path}")
    for section, titles in board.sections.items():
        print(f"  {section}: {', '.join(titles)}")
    if publish:
        try:
            print(f"published: {board.publish()}")
        except Exception as err:  # no login, no network, unknown entity
            raise MarlError(
                f"could not publish the dashboard ({first_line(err)}); log in with `wandb "
                "login` and upload the runs first with `wandb sync <run dir>/wandb/offline-run-*`"
            ) from None
    else:
        print(
            "offline: nothing uploaded. To publish: `wandb login`, `wandb sync "
            "<run dir>/wandb/offline-run-*` for the runs, then `marl dashboard "
            f"{' '.join(map(str, paths))} --publish` (entity: logger.wandb.entity or your "
            "default)"
        )
    return 0
