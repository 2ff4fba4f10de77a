"""The W&B workspace of docs/wandb.md, built in code with wandb-workspaces: `pipeline dashboard --project P`.

Online it is saved as a new view of the project and its URL returned; otherwise the view's spec (the JSON that
`save()` uploads) is written to a file, to read, diff or upload later.

A W&B workspace has one run set: one filter, one sort and one runs table for all its sections. So the filter
holds every job type a section plots, and each panel plots the runs that logged its keys (`public_lb` is in
predict/ensemble summaries, `valid/score` in train histories, `score` in trial summaries).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import UserError
from pipeline.core.files import write_json

if TYPE_CHECKING:
    import wandb_workspaces.workspaces as ws

EXPERIMENTS = ["predict", "ensemble"]  # one run per experiment or blend: its CV, and its LB once recorded
# What the sections plot; submit and report runs would repeat an experiment's CV in the table and the scatter
JOB_TYPES = [*EXPERIMENTS, "train", "trial", "leaderboard"]
# The runs table's columns, "section:key"; W&B stores a nested config key as <top>.value.<rest>
COLUMNS = ["summary:cv", "summary:cv_std", "summary:public_lb", "summary:private_lb",
           "config:model.value.name", "config:image.value.size", "config:predict.value.tta"]
SEARCHED = ["train.base_lr", "train.weight_decay", "model.drop_rate"]  # tune's search space, as config keys
MAX_RUNS = 100  # panels plot the first MAX_RUNS runs (or groups) of the sorted table; the app's default is 10
WIDE = 24  # panel widths are in grid units out of 24


def _libraries():
    """wandb_workspaces' two halves (the workspace, the panels), imported on use: the import takes ~1 s."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ModuleNotFoundError as e:
        raise UserError("the W&B dashboard needs wandb-workspaces: pip install wandb-workspaces "
                        "(make setup installs it)") from e
    return ws, wr


def experiments_section() -> ws.Section:
    """CV against public LB, a point per experiment or blend: off the diagonal, CV no longer predicts LB."""
    ws, wr = _libraries()
    cv_vs_lb = wr.ScatterPlot(title="CV vs LB", x=wr.SummaryMetric("cv"), y=wr.SummaryMetric("public_lb"))
    return ws.Section(name="Experiments by CV", panels=[cv_vs_lb], is_open=True)


def learning_curves_section() -> ws.Section:
    """Validation score and train loss per epoch, a curve per experiment: the mean and range of its folds."""
    ws, wr = _libraries()
    panels = [wr.LinePlot(title=key, x="epoch", y=[key], groupby="Group", groupby_aggfunc="mean",
                          groupby_rangefunc="minmax") for key in ("valid/score", "train/loss")]
    return ws.Section(name="Learning curves", panels=panels, is_open=True)


def leaderboard_section() -> ws.Section:
    """The `leaderboard` table a leaderboard run logs: every row of submissions/log.csv."""
    ws, wr = _libraries()
    table = wr.WeavePanelSummaryTable(table_name="leaderboard", layout=wr.Layout(w=WIDE, h=12))
    return ws.Section(name="Leaderboard", panels=[table], is_open=True)


def tuning_section() -> ws.Section:
    """Each tune trial's drawn values against its score, and its score against the learning rate (log x)."""
    ws, wr = _libraries()
    axes = [wr.Config(key) for key in SEARCHED] + [wr.SummaryMetric("score")]
    columns = [wr.ParallelCoordinatesPlotColumn(metric=axis) for axis in axes]
    coordinates = wr.ParallelCoordinatesPlot(title="Tuning", columns=columns, layout=wr.Layout(w=16, h=8))
    score_vs_lr = wr.ScatterPlot(title="score vs base_lr", x=wr.Config("train.base_lr"),
                                 y=wr.SummaryMetric("score"), log_x=True)
    return ws.Section(name="Tuning", panels=[coordinates, score_vs_lr], is_open=True)


def build_workspace(project: str, entity: str | None, name: str = "pipeline") -> ws.Workspace:
    """The dashboard of docs/wandb.md as a W&B workspace (a saved view) of `project`."""
    ws, _ = _libraries()
    best_cv_first = ws.Ordering(ws.Summary("cv"), ascending=False)  # for a lower-is-better metric: flip it
    runs = ws.RunsetSettings(filters=[ws.Metric("JobType").isin(JOB_TYPES)], order=[best_cv_first],
                             pinned_columns=list(COLUMNS))
    sections = [experiments_section(), learning_curves_section(), leaderboard_section(), tuning_section()]
    # The library requires an entity; a spec written offline carries "" until it is saved under one
    return ws.Workspace(entity=entity or "", project=project, name=name, sections=sections,
                        runset_settings=runs, settings=ws.WorkspaceSettings(max_runs=MAX_RUNS))


def spec(workspace: ws.Workspace) -> dict[str, Any]:
    """The workspace as the JSON that save() sends: the view (entity, project, name) and its `spec`."""
    # The library has no public serialiser; _to_model() is the wire model that its save() dumps the same way
    return workspace._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def run(project: str, entity: str | None, out: Path, mode: str) -> Path | str:
    """Online: save the workspace to W&B, return its URL. Otherwise: write its spec to `out`, return `out`."""
    if mode == "online" and not entity:
        raise UserError("saving a W&B workspace needs the entity that owns the project: pass --entity "
                        "(your W&B user or team name) or set tracking.entity in the config")
    workspace = build_workspace(project, entity)
    if mode != "online":
        write_json(out, spec(workspace))
        return out
    import wandb

    try:
        return workspace.save().url  # a new view each time: save() only updates a view it loaded
    except wandb.errors.Error as e:  # no API key, a refused key, an unknown entity or project
        raise UserError(f"W&B did not save the workspace ({type(e).__name__}: {e}): check --entity and "
                        "--project, and the API key (`wandb login`)") from e
