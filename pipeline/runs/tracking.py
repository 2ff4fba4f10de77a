"""Experiment tracking: W&B (online/offline) or a null tracker with the same methods.

W&B never blocks a run: `auto` goes online only when a key is configured and the server answers within
a few seconds, otherwise it records offline (sync later with `wandb sync runs/<exp>/wandb/...`). Offline means
offline: wandb is told before its first run (environment and process settings), so neither its telemetry nor its
service looks a server up. Online, finish() waits tracking.finish_timeout at most.
Any W&B failure mid-run is logged once and tracking continues as a no-op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import netrc
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.core.config import Config, to_dict
from pipeline.core.files import write_json

log = logging.getLogger(__name__)
PROBE_SECONDS = 3.0


class NullTracker:
    """Tracking switched off: every call is accepted and does nothing."""

    run_id: str | None = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def media(self, images: dict[str, Any], tables: dict[str, Any]) -> None:
        pass

    def artifact(self, name: str, kind: str, paths: list[Path], uses: list[str] = (), metadata: dict | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    def __init__(self, run):
        self.run = run
        self.run_id = run.id

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._safely(lambda run: run.log(metrics, step=step))

    def summary(self, values: dict[str, Any]) -> None:
        self._safely(lambda run: run.summary.update(string_keys(values)))

    def media(self, images: dict[str, Any], tables: dict[str, Any]) -> None:
        """PNG files as W&B images and DataFrames as W&B tables, under the given keys."""
        import wandb

        self._safely(lambda run: run.log({**{k: wandb.Image(str(p)) for k, p in images.items()},
                                          **{k: wandb.Table(dataframe=t) for k, t in tables.items()}}))

    def artifact(self, name: str, kind: str, paths: list[Path], uses: list[str] = (), metadata: dict | None = None) -> None:
        """Files and folders as the W&B artifact `name` (type `kind`) of this run. `uses` names the artifacts it
        was made from: online the run uses them (W&B draws the lineage); offline W&B cannot look an artifact up,
        so their names go into the metadata, `made_from`, and the lineage is drawn once the runs are synced."""
        import wandb

        def log_artifact(run) -> None:
            made = wandb.Artifact(safe_name(name), type=kind, metadata={**(metadata or {}), "made_from": list(uses)})
            for path in map(Path, paths):
                if path.is_dir():
                    made.add_dir(str(path), name=path.name)
                else:
                    made.add_file(str(path))
            if not run.offline:
                for source in uses:
                    run.use_artifact(f"{safe_name(source)}:latest")
            run.log_artifact(made)

        self._safely(log_artifact)

    def finish(self) -> None:
        self._safely(lambda run: run.finish())

    def _safely(self, call) -> None:
        """call(run), unless an earlier call failed; the first failure is logged and ends tracking."""
        if self.run is None:
            return
        try:
            call(self.run)
        except Exception as e:  # tracking must never end a training run
            log.warning("W&B call failed (%s: %s); continuing without W&B", type(e).__name__, e)
            self.run = None


def string_keys(value: Any) -> Any:
    """Nested dicts with str keys: W&B's summary joins key paths as strings and fails on an int key (a fold)."""
    if isinstance(value, dict):
        return {str(k): string_keys(v) for k, v in value.items()}
    return value


def safe_name(name: str) -> str:
    """An artifact name W&B accepts (letters, digits, dashes, underscores, dots)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def resolve_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if not _has_key(KEY_HOSTS):  # no key: no probe either
        return "offline"
    return "online" if _reachable(server_host()) else "offline"


KEY_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")  # where `wandb login` keeps a key in ~/.netrc, old and new


def server_host() -> str:
    """The host W&B would talk to: $WANDB_BASE_URL, else the installed wandb's own default (it moved from
    api.wandb.ai; probing the old one would answer for a server this wandb never uses)."""
    url = os.environ.get("WANDB_BASE_URL")
    if not url:
        try:
            from wandb.sdk.lib.urls import DEFAULT_BASE_URL as url
        except ImportError:  # an older wandb
            url = "https://api.wandb.ai"
    return urlparse(url).hostname or "api.wandb.ai"


def _has_key(hosts) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    base = urlparse(os.environ.get("WANDB_BASE_URL", "")).hostname
    try:
        keys = netrc.netrc()
    except (OSError, netrc.NetrcParseError):
        return False
    return any(keys.authenticators(h) is not None for h in (base, *hosts) if h)


def offline_before_import(mode: str) -> None:
    """Offline and disabled runs make no network lookup: wandb reads WANDB_MODE for its process-wide settings
    (telemetry included) and its service inherits the environment, so both are set before its first run. A mode
    the user exported stays theirs."""
    if mode == "online":
        return
    os.environ.setdefault("WANDB_MODE", mode)
    import wandb

    wandb.setup(settings=wandb.Settings(mode=mode))


def _reachable(host: str) -> bool:
    """Can we open a TCP connection to host:443 within PROBE_SECONDS, name lookup included?

    The connect timeout does not cover DNS, which can hang for tens of seconds on a machine without
    network, so the probe runs in a daemon thread that is simply abandoned at the deadline.
    """
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=PROBE_SECONDS).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS)
    return bool(answer and answer[0])


def build_tracker(cfg: Config, name: str, job_type: str, run_id: str | None = None, where: str | None = None):
    """One W&B run per fold/stage, grouped by experiment; resumes `run_id` when given. Its files go under `where`
    (default: the experiment's folder)."""
    mode = resolve_mode(cfg.tracking.wandb)
    if mode == "disabled":
        return NullTracker()
    try:
        offline_before_import(mode)
        import wandb

        run = wandb.init(
            project=cfg.tracking.project,
            entity=cfg.tracking.entity,
            group=cfg.tracking.group or cfg.name,
            name=f"{cfg.name}/{name}",
            job_type=job_type,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(where or cfg.run_dir),
            config=to_dict(cfg),
            mode=mode,
            settings=wandb.Settings(console="off", silent=True, init_timeout=60, **finish_deadline(wandb, cfg)),
        )
    except Exception as e:
        log.warning("W&B did not start (%s: %s); continuing without tracking", type(e).__name__, e)
        return NullTracker()
    log.info("W&B %s run %s (%s)", mode, run.id, run.dir)
    return WandbTracker(run)


def finish_deadline(wandb, cfg: Config) -> dict:
    """wandb's finish_timeout setting where this wandb has it (newer releases; older ones wait for ever)."""
    fields = getattr(wandb.Settings, "model_fields", {})
    return {"finish_timeout": max(cfg.tracking.finish_timeout, 0.0)} if "finish_timeout" in fields else {}


RUN_IDS = "wandb_runs.json"  # in an experiment's folder: {job type: W&B run id}, where a later LB score is written


def run_ids(run_dir: str | Path) -> dict[str, str]:
    path = Path(run_dir) / RUN_IDS
    return json.loads(path.read_text()) if path.is_file() else {}


def remember(run_dir: Path, job_type: str, tracker) -> None:
    """Keep the id of an experiment's predict/ensemble run, where its leaderboard scores land later."""
    if tracker.run_id is not None:
        write_json(Path(run_dir) / RUN_IDS, {**run_ids(run_dir), job_type: tracker.run_id})


def publish_scores(cfg: Config, values: dict[str, Any]) -> None:
    """Leaderboard scores into the summary of the experiment's predict (or ensemble) run, resumed by its id."""
    ids = run_ids(cfg.run_dir)
    for job_type in ("ensemble", "predict"):
        if job_type in ids:
            tracker = build_tracker(cfg, job_type, job_type, run_id=ids[job_type])
            tracker.summary(values)
            tracker.finish()
            return
    log.info("no W&B predict/ensemble run recorded for %s; its LB is in submissions/log.csv only", cfg.name)


def publish_leaderboard(cfg: Config, table, submissions_dir: str | Path) -> None:
    """The whole submissions log as table `leaderboard` of the project's one `leaderboard` run: every recorded
    score appends a version of it (offline, to a run of the same id that `wandb sync` merges)."""
    project = f"{cfg.tracking.entity or ''}/{cfg.tracking.project}"
    run_id = "leaderboard-" + hashlib.sha1(project.encode()).hexdigest()[:10]  # one per project, on any machine
    board = dataclasses.replace(cfg, name="leaderboard", tracking=dataclasses.replace(cfg.tracking, group="leaderboard"))
    tracker = build_tracker(board, "table", "leaderboard", run_id=run_id, where=str(submissions_dir))
    tracker.media({}, {"leaderboard": table.astype(str)})
    tracker.finish()
