"""The W&B dashboard built in code: the spec it writes (what save() would upload), not W&B's server."""

import json
import sys
from types import SimpleNamespace

import pytest

pytest.importorskip("wandb_workspaces")

from pipeline.core.errors import UserError  # noqa: E402
from pipeline.reporting import dashboard  # noqa: E402


@pytest.fixture(scope="module")
def view() -> dict:
    return dashboard.spec(dashboard.build_workspace("digits", "team"))


def sections(view: dict) -> dict[str, list[dict]]:
    return {s["name"]: s["panels"] for s in view["spec"]["section"]["panelBankConfig"]["sections"]}


def runset(view: dict) -> dict:
    (runs,) = view["spec"]["section"]["runSets"]  # a workspace has exactly one run set
    return runs


def test_sections_in_order(view):
    assert list(sections(view)) == ["Experiments by CV", "Learning curves", "Leaderboard", "Tuning"]
    assert (view["entity"], view["project"], view["displayName"]) == ("team", "digits", "pipeline")


def test_runs_table_holds_the_experiments_best_cv_first(view):
    runs = runset(view)
    (job_type,) = runs["filters"]["filters"]
    assert job_type["key"] == {"section": "run", "name": "jobType"} and job_type["op"] == "IN"
    assert {"predict", "ensemble"} <= set(job_type["value"])
    assert not {"submit", "report"} & set(job_type["value"])  # they repeat an experiment's CV: no twin points
    assert runs["sort"]["keys"] == [{"key": {"section": "summary", "name": "cv"}, "ascending": False}]
    assert runs["runFeed"]["columnOrder"] == [
        "run:displayName", "summary:cv", "summary:cv_std", "summary:public_lb", "summary:private_lb",
        "config:model.value.name", "config:image.value.size", "config:predict.value.tta"]


def test_cv_vs_lb_scatter(view):
    (scatter,) = sections(view)["Experiments by CV"]
    assert scatter["viewType"] == "Scatter Plot"
    assert (scatter["config"]["xAxis"], scatter["config"]["yAxis"]) == ("summary:cv", "summary:public_lb")


def test_learning_curves_group_the_folds_of_each_experiment(view):
    plots = sections(view)["Learning curves"]
    assert [p["config"]["metrics"] for p in plots] == [["valid/score"], ["train/loss"]]
    for plot in plots:
        assert plot["viewType"] == "Run History Line Plot"
        assert (plot["config"]["xAxis"], plot["config"]["groupBy"]) == ("epoch", "group")
    assert {"train"} <= set(runset(view)["filters"]["filters"][0]["value"])


def test_leaderboard_panel_reads_the_leaderboard_table(view):
    (panel,) = sections(view)["Leaderboard"]
    assert panel["viewType"] == "Weave"
    pick = panel["config"]["panel2Config"]["exp"]["fromOp"]
    assert pick["name"] == "pick" and pick["inputs"]["key"]["val"] == "leaderboard"
    assert pick["inputs"]["obj"]["fromOp"]["name"] == "run-summary"
    assert "leaderboard" in runset(view)["filters"]["filters"][0]["value"]


def test_tuning_panels(view):
    coordinates, scatter = sections(view)["Tuning"]
    assert coordinates["viewType"] == "Parallel Coordinates Plot"
    assert [c["accessor"] for c in coordinates["config"]["columns"]] == [
        "config:train.value.base_lr", "config:train.value.weight_decay", "config:model.value.drop_rate",
        "summary:score"]
    assert scatter["config"]["xAxis"] == "config:train.value.base_lr"
    assert scatter["config"]["yAxis"] == "summary:score"
    assert scatter["config"]["xAxisLogScale"] is True
    assert "trial" in runset(view)["filters"]["filters"][0]["value"]


def test_offline_writes_a_spec_the_library_loads_back(tmp_path):
    out = tmp_path / "runs" / "dashboard.json"
    assert dashboard.run("digits", None, out, "offline") == out
    with open(out) as f:
        written = json.load(f)
    assert written["project"] == "digits" and written["entity"] == ""
    assert list(sections(written)) == ["Experiments by CV", "Learning curves", "Leaderboard", "Tuning"]
    assert sections(written)["Experiments by CV"][0]["config"]["yAxis"] == "summary:public_lb"
    assert not list(out.parent.glob(".*.tmp"))  # written atomically: no temporary file left

    # A valid W&B view: the library parses it back into the same workspace (private API: there is no public)
    from wandb_workspaces.workspaces import internal
    from wandb_workspaces.workspaces.interface import Workspace

    loaded = Workspace._from_model(internal.View.model_validate(written))
    assert [s.name for s in loaded.sections] == list(sections(written))
    assert [c.metric.name for c in loaded.sections[3].panels[0].columns] == [*dashboard.SEARCHED, "score"]
    assert loaded.sections[2].panels[0].table_name == "leaderboard"


def test_online_without_entity_is_refused_before_any_network():
    with pytest.raises(UserError, match="--entity"):
        dashboard.run("digits", None, None, "online")


def test_online_saves_the_workspace_and_returns_its_url(monkeypatch, tmp_path):
    import wandb
    from wandb_workspaces.workspaces import Workspace

    saved = []

    def save(self):
        saved.append(self)
        return SimpleNamespace(url="https://x/team/digits")

    monkeypatch.setattr(Workspace, "save", save)
    assert dashboard.run("digits", "team", tmp_path / "dashboard.json", "online") == "https://x/team/digits"
    assert [(w.entity, w.project) for w in saved] == [("team", "digits")]
    assert not (tmp_path / "dashboard.json").exists()  # online writes no file

    def refused(self):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(Workspace, "save", refused)  # W&B's errors become one line for the CLI
    with pytest.raises(UserError, match="W&B did not save the workspace .*No API key"):
        dashboard.run("digits", "team", tmp_path / "dashboard.json", "online")


def test_missing_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # `import wandb_workspaces...` now fails
    with pytest.raises(UserError, match="pip install wandb-workspaces"):
        dashboard.build_workspace("digits", "team")
