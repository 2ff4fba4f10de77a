"""The leaderboard loop through the official `kaggle` client, against a stand-in server on 127.0.0.1.

Nothing here reaches the internet: the client is pointed at http://localhost (KAGGLE_API_ENVIRONMENT=LOCALHOST)
and every request goes through HTTP(S)_PROXY to the stand-in (tests/kaggle_standin.py), which also plays the
errors: bad credentials, rules not accepted, the daily limit, a scoring error, a dead network.
"""

import importlib.util
import io
import json
import multiprocessing
import sys
import time
import zipfile

import pandas as pd
import pytest

from pipeline.runs import kaggle as kaggle_client
from pipeline.runs.submissions import COLUMNS, SubmissionLog
from tests import wandb_records
from tests.conftest import assert_refused, cli, invoke
from tests.kaggle_standin import StandIn

if importlib.util.find_spec("kaggle") is None:  # not imported here: the client reads its environment at import
    pytest.skip("the kaggle client is not installed (make setup installs it)", allow_module_level=True)
COMPETITION = "digits-comp"


@pytest.fixture
def kaggle(monkeypatch, tmp_path):
    """The stand-in, running, with this process's environment pointed at it; yields the stand-in."""
    with StandIn(username="tester", key="secret") as server:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(name, server.proxy)
        for name in ("NO_PROXY", "no_proxy", "KAGGLE_API_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
        monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kaggle/access_token of the developer's
        monkeypatch.setenv("KAGGLE_USERNAME", "tester")
        monkeypatch.setenv("KAGGLE_KEY", "secret")
        monkeypatch.setattr(kaggle_client, "POLL_SECONDS", 0.05)
        local_client()
        yield server


def local_client() -> None:
    """The client reads KAGGLE_API_ENVIRONMENT once, when first imported: import it now, or check it is local."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    assert "--local" in KaggleApi.args, "kaggle was imported before the stand-in's environment was set"


def log_bytes(subs) -> bytes:
    path = subs / "log.csv"
    return path.read_bytes() if path.is_file() else b""


def test_download_submit_and_score_through_the_client(kaggle, copy_run, digits_root, tmp_path):
    kaggle.add_competition(COMPETITION, digits_root)
    result = cli("download", COMPETITION, "--to", tmp_path / "data" / COMPETITION)
    data = tmp_path / "data" / COMPETITION
    assert sorted(p.name for p in data.glob("*.csv")) == sorted(p.name for p in digits_root.glob("*.csv"))
    assert f"root: {data}" in result.stdout and "sample_submission: sample_submission.csv" in result.stdout
    assert not list(tmp_path.glob("data/.*"))  # no staging folder left
    assert_refused(invoke("download", COMPETITION, "--to", data), "not empty", "--force")

    cfg = copy_run("exp", data={"root": str(data)})
    cli("submit", "exp", "--runs-dir", cfg.runs_dir, "--kaggle", COMPETITION, "--message", "first", "--wait", "1")
    log = SubmissionLog(cfg.submissions_dir).read()
    assert len(log) == 1 and list(log.columns) == COLUMNS
    row = log.iloc[0]
    assert (row["status"], row["competition"], row["kaggle_ref"], row["message"]) == \
        ("complete", COMPETITION, "1000", "first")
    assert row["public_lb"] == pytest.approx(0.875) and pd.isna(row["private_lb"])
    csv = tmp_path / "subs" / "exp.csv"
    assert kaggle.uploads["sub0"] == csv.read_bytes()  # the bytes Kaggle got are the validated file
    assert kaggle.submissions[0]["description"] == "first"
    assert kaggle.calls[:4] == ["DownloadDataFiles", "GetSubmissionLimits", "StartSubmissionUpload", "CreateSubmission"]


def test_a_pending_score_and_a_file_uploaded_by_hand_are_filled_by_lb(kaggle, copy_run, tmp_path):
    cfg = copy_run("exp")
    subs = tmp_path / "subs"
    kaggle.polls_to_score = 100  # Kaggle is slow today
    cli("submit", "exp", "--runs-dir", cfg.runs_dir, "--kaggle", COMPETITION, "--wait", "0")
    assert SubmissionLog(subs).read().loc[0, "status"] == "pending"
    cli("submit", "exp", "--runs-dir", cfg.runs_dir, "--out", subs / "by-hand.csv")  # uploaded on the website
    kaggle.submissions.append({"ref": 77, "fileName": "by-hand.csv", "description": "", "status": "COMPLETE",
                               "polls": 0, "publicScore": "0.5", "privateScore": "", "bytes": b""})
    kaggle.polls_to_score = 0
    cli("lb", COMPETITION, "--submissions-dir", subs, "--runs-dir", cfg.runs_dir)
    log = SubmissionLog(subs).read()
    assert list(log["kaggle_ref"]) == ["1000", "77"] and list(log["status"]) == ["complete", "complete"]
    assert list(log["public_lb"]) == pytest.approx([0.875, 0.5]) and log["private_lb"].isna().all()

    for s in kaggle.submissions:  # the competition ended: private scores appear
        s["privateScore"] = "0.81"
    before = len(log)
    cli("lb", COMPETITION, "--submissions-dir", subs, "--runs-dir", cfg.runs_dir)
    log = SubmissionLog(subs).read()
    assert len(log) == before and list(log["private_lb"]) == pytest.approx([0.81, 0.81])
    (subs / "by-hand.csv").write_text("changed\n")  # a file rewritten since is never matched by name
    kaggle.submissions.append({"ref": 78, "fileName": "by-hand.csv", "status": "COMPLETE", "polls": 0,
                               "publicScore": "0.1", "bytes": b""})
    cli("lb", COMPETITION, "--submissions-dir", subs, "--runs-dir", cfg.runs_dir)
    assert list(SubmissionLog(subs).read()["kaggle_ref"]) == ["1000", "77"]


FAILURES = {  # name: (how the stand-in or the environment fails, what the one line must say)
    "no credentials": (lambda server, mp: [mp.delenv("KAGGLE_USERNAME"), mp.delenv("KAGGLE_KEY")],
                       ["no Kaggle credentials", "kaggle.json", "KAGGLE_USERNAME"]),
    "wrong key": (lambda server, mp: mp.setenv("KAGGLE_KEY", "stale"), ["refused the credentials (401", "new token"]),
    "rules not accepted": (lambda server, mp: server.fail.update(StartSubmissionUpload=(
        403, "You must accept this competition's rules before you'll be able to submit")),
        ["403", f"https://www.kaggle.com/competitions/{COMPETITION}/rules"]),
    "daily limit": (lambda server, mp: setattr(server, "allowed", 0), ["daily submission limit", "00:00 UTC"]),
    "limit at upload": (lambda server, mp: server.fail.update(CreateSubmission=(
        400, "Submission not allowed: Your team has used its daily Submission allowance (5) today")),
        ["daily Submission allowance", "00:00 UTC"]),
    "network down": (lambda server, mp: [mp.setenv(n, "http://127.0.0.1:9") for n in ("HTTP_PROXY", "http_proxy")],
                     ["cannot reach Kaggle", "nothing was recorded"]),
    "unknown competition": (lambda server, mp: server.fail.update(
        GetSubmissionLimits=(404, "Competition not found"), ListSubmissions=(404, "Competition not found")),
        ["not found on Kaggle (404", "as it appears in the URL"]),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_each_failure_is_one_line_and_the_log_is_unchanged(failure, kaggle, copy_run, tmp_path, monkeypatch):
    cfg = copy_run("exp")
    cli("submit", "exp", "--runs-dir", cfg.runs_dir, "--message", "kept")  # a log with one row already
    before = log_bytes(tmp_path / "subs")
    breaks, fragments = FAILURES[failure]
    breaks(kaggle, monkeypatch)
    assert_refused(invoke("submit", "exp", "--runs-dir", cfg.runs_dir, "--kaggle", COMPETITION), *fragments)
    assert log_bytes(tmp_path / "subs") == before
    if failure == "unknown competition":
        assert_refused(invoke("lb", COMPETITION, "--submissions-dir", tmp_path / "subs"), "404")
        assert log_bytes(tmp_path / "subs") == before


def test_a_scoring_error_is_one_line_and_recorded_as_an_error(kaggle, copy_run, tmp_path):
    cfg = copy_run("exp")
    kaggle.error = "Submission CSV has 10 rows, expected 359"
    line = assert_refused(invoke("submit", "exp", "--runs-dir", cfg.runs_dir, "--kaggle", COMPETITION),
                          "could not score", "expected 359", "submit again")
    assert "submission 1000" in line
    log = SubmissionLog(tmp_path / "subs").read()
    assert list(log["status"]) == ["error"] and log["public_lb"].isna().all()  # the upload counted: it is logged


def append_rows(folder, worker: int, n: int) -> None:
    book = SubmissionLog(folder)
    for i in range(n):
        book.append({"exp": f"w{worker}", "message": str(i), "cv": 0.5})


def test_two_submits_at_once_lose_no_row(tmp_path):
    """Two processes appending to one log: every row lands once (without the lock, read-modify-write races)."""
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    workers = [ctx.Process(target=append_rows, args=(tmp_path, w, 40)) for w in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    log = SubmissionLog(tmp_path).read()
    assert len(log) == 80
    assert sorted(zip(log["exp"], log["message"].astype(int), strict=True)) == sorted((f"w{w}", i) for w in range(2) for i in range(40))


def test_an_old_log_is_read_and_extended_in_place(kaggle, copy_run, tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    old = pd.DataFrame([{"exp": "exp", "cv": 0.9, "metric": "accuracy", "file": "x.csv", "created": "2026-01-01",
                         "message": "", "public_lb": 0.88}])
    old.to_csv(subs / "log.csv", index=False)
    cfg = copy_run("exp")
    cli("submit", "exp", "--runs-dir", cfg.runs_dir, "--kaggle", COMPETITION, "--wait", "1")
    log = SubmissionLog(subs).read()
    assert list(log.columns) == COLUMNS and list(log["public_lb"]) == pytest.approx([0.88, 0.875])
    assert pd.isna(log.loc[0, "kaggle_ref"]) and log.loc[1, "kaggle_ref"] == "1000"


def test_export_becomes_a_kaggle_dataset_and_a_notebook_bound_to_it(kaggle, copy_run, tmp_path):
    cfg = copy_run("solo")
    out = tmp_path / "exports" / "solo"
    cli("export", "solo", "--runs-dir", cfg.runs_dir, "--out", out, "--kaggle-dataset", "tester/solo-export",
        "--kaggle-kernel", "--kaggle", COMPETITION)
    dataset = kaggle.datasets["tester/solo-export"]
    assert dataset["private"] is True and "manifest.json" in dataset["files"] and "solo.zip" in dataset["files"]
    assert "dataset-metadata.json" not in [p.name for p in out.iterdir()]  # the export folder is untouched
    kernel = kaggle.kernels["tester/solo-export-inference"]
    assert kernel["datasetDataSources"] == ["tester/solo-export"] and kernel["competitionDataSources"] == [COMPETITION]
    assert kernel["enableInternet"] is False
    notebook = json.loads(kernel["text"])
    source = "".join(c["source"] for c in notebook["cells"])
    assert "EXPORT = '/kaggle/input/solo-export'" in source and f"'/kaggle/input/{COMPETITION}'" in source
    blob = next(t for t, n in kaggle.names.items() if n == "solo.zip")
    with zipfile.ZipFile(io.BytesIO(kaggle.uploads[blob])) as z:
        assert any(name.endswith("model.safetensors") for name in z.namelist())

    cli("export", "solo", "--runs-dir", cfg.runs_dir, "--out", out, "--force", "--kaggle-dataset", "tester/solo-export")
    assert len(kaggle.datasets["tester/solo-export"]["versions"]) == 2  # the second push is a new version
    assert_refused(invoke("export", "solo", "--runs-dir", cfg.runs_dir, "--out", tmp_path / "e2", "--kaggle-kernel"),
                   "--kaggle-dataset")
    assert_refused(invoke("export", "solo", "--runs-dir", cfg.runs_dir, "--out", tmp_path / "e3",
                          "--kaggle-dataset", "no-owner"), "OWNER/SLUG")


def offline_runs(folder) -> dict[str, list]:
    """Offline run folders under folder/wandb by run id (a resumed run adds a folder of the same id)."""
    found: dict[str, list] = {}
    for path in sorted(folder.glob("wandb/offline-run-*")):
        found.setdefault(path.name.split("-")[-1], []).append(path)
    return found


def logged_artifacts(folder, timeout: float = 60.0) -> list[dict]:
    """The run's own artifacts (not the run_table ones W&B makes for logged tables). W&B's service may write the
    artifact record after run.finish() returned: wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        found = [a for a in wandb_records.artifacts(folder) if a["type"] != "run_table"]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_the_lb_tables_and_artifacts_land_in_offline_wandb(kaggle, copy_run, tmp_path, monkeypatch):
    from pipeline.stages import predict

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    offline = {"wandb": "offline", "quiet": True}
    cfg, other = copy_run("exp", tracking=offline), copy_run("b", tracking=offline)
    predict.run(cfg)
    predict.run(other)
    (predict_id,) = offline_runs(cfg.run_dir)
    assert json.loads((cfg.run_dir / "wandb_runs.json").read_text()) == {"predict": predict_id}
    (first,) = offline_runs(cfg.run_dir)[predict_id]
    tables = wandb_records.logged_keys(first)
    assert tables["oof/per_class"] == "table-file" and tables["oof/confusion"] == "table-file"
    (made,) = logged_artifacts(first)
    assert (made["name"], made["type"]) == ("exp-predictions", "predictions")
    assert made["files"] == ["oof.parquet", "scores.json", "test.parquet"] and made["metadata"]["made_from"] == []

    cli("ensemble", "exp", "b", "--name", "pair", "--runs-dir", cfg.runs_dir)
    pair = cfg.run_dir.parent / "pair"
    (ens_id,) = offline_runs(pair)
    (ens,) = logged_artifacts(offline_runs(pair)[ens_id][0])
    assert ens["name"] == "pair-predictions" and ens["metadata"]["made_from"] == ["exp-predictions", "b-predictions"]

    cli("submit", "pair", "--runs-dir", cfg.runs_dir, "--kaggle", COMPETITION, "--wait", "1")
    resumed = offline_runs(pair)[ens_id]
    assert len(resumed) == 2  # the ensemble's run, resumed by its id to take the LB
    assert wandb_records.summary(resumed[1])["public_lb"] == pytest.approx(0.875)
    submit_runs = [p for ps in offline_runs(pair).values() for p in ps if p not in resumed]
    (sub,) = [a for p in submit_runs for a in logged_artifacts(p)]
    assert (sub["name"], sub["type"], sub["files"]) == ("pair-submission", "submission", ["pair.csv"])
    assert sub["metadata"]["made_from"] == ["pair-predictions"] and sub["metadata"]["competition"] == COMPETITION
    (board,) = offline_runs(tmp_path / "subs").values()
    assert wandb_records.logged_keys(board[0]).get("leaderboard") == "table-file"
