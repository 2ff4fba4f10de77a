"""Where folds, predict shards and tuning workers run: one after another in this process (local, the default, which
needs nothing), or each as a Ray task on a cluster (`--on ray`, `cluster.executor: ray`).

    pipeline train --config C --fold all --on ray                      a Ray instance on this machine, its GPUs
    RAY_ADDRESS=10.0.0.1:6379 pipeline train --config C --fold all --on ray    a cluster (`ray start --head` there)

A job is a module-level function and its arguments; the same job runs the same way under both executors, so the
files it leaves in runs/<exp>/ are the same. On Ray each job asks for one GPU (cluster.gpus) where the cluster has
GPUs, else cluster.cpus CPUs; a job whose worker or node dies runs again (cluster.retries) and, being a fold,
resumes from its last.pt. Before any work every node writes a probe file into the run directory that this machine
must see: results stay plain files, so every node needs the same folder at the same path. The driver prints one
line per job event (started on node/GPU, epoch n/N, retried, finished) and a table at the end; Ctrl-C cancels the
tasks and frees their fold locks, leaving every fold resumable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import ClusterConfig, Config, with_values
from pipeline.core.distributed import FoldLock
from pipeline.core.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One unit of work: fn(*args, events=...) in whichever process runs it. fn must be importable by name (a
    module-level function) and args picklable; its return value is a small dict for the summary table."""

    key: str  # how the driver names it: "fold 0", "predict 2", "tune worker 1"
    fn: Callable[..., dict]
    args: tuple = ()
    lock: Path | None = None  # the fold lock it takes; freed by the driver if the job is cancelled


class Events:
    """What a job tells its driver as it goes (started, resuming, epoch): the local executor's jobs tell nobody,
    since they log to the same console themselves."""

    ray_task = ""  # the Ray task id of the job ("" in this process): its fold locks carry it

    def emit(self, what: str, **fields: Any) -> None:
        pass


NO_EVENTS = Events()


class LocalExecutor:
    """Every job in this process, in order: today's behaviour, nothing to install."""

    name = "local"

    def run(self, jobs: Sequence[Job]) -> list[dict]:
        return [job.fn(*job.args, events=NO_EVENTS) for job in jobs]


def build_executor(cluster: ClusterConfig, parallel: int = 1) -> LocalExecutor | RayExecutor:
    """cluster.executor's executor; `parallel` > 1 jobs at once on this machine (tune --workers N, predict --gpus N)
    need processes of their own, so they run on Ray even when the config says local."""
    if cluster.executor == "ray" or parallel > 1:
        return RayExecutor(cluster, parallel)
    return LocalExecutor()


def shared_paths(cfg: Config) -> Config:
    """cfg with every path absolute: a task on another node (or another working directory) reads the same files."""
    values = {"runs_dir": str(Path(cfg.runs_dir).resolve()),
              "submissions_dir": str(Path(cfg.submissions_dir).resolve()),
              "data.root": str(Path(cfg.data.root).resolve())}
    if cfg.data.cache_dir:
        values["data.cache_dir"] = str(Path(cfg.data.cache_dir).resolve())
    for key in ("distill.teacher", "pseudo.source"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name):
            values[key] = str(Path(getattr(getattr(cfg, section), name)).resolve())
    return with_values(cfg, values)


# --- Ray ---------------------------------------------------------------------------------------------------------

def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--on ray (cluster.executor: ray, tune --workers N, predict --gpus N) runs jobs as Ray tasks, "
                        "and Ray is not installed: pip install 'pipeline[cluster]' (make setup installs it)") from None
    return ray


def connect(cluster: ClusterConfig, gpus: int | None = None) -> str:
    """Join cluster.address ($RAY_ADDRESS), else start a Ray instance on this machine with its CPUs and GPUs (at
    most `gpus` of them); returns where."""
    ray = import_ray()
    address = cluster.address or os.environ.get("RAY_ADDRESS", "")
    if ray.is_initialized():
        return address or "this machine"
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": False}
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"no Ray cluster at {address} ({str(e).splitlines()[0]}): start one with `ray start --head` "
                            "on its first machine, or leave cluster.address and RAY_ADDRESS empty for one on this "
                            "machine") from None
        return address
    started = time.perf_counter()
    ray.init(include_dashboard=False, **({"num_gpus": gpus} if gpus is not None else {}), **quiet)
    log.info("started a Ray instance on this machine in %.1f s: %s", time.perf_counter() - started,
             ", ".join(f"{v:g} {k}" for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU")))
    return "this machine"


class Board:
    """A Ray actor the jobs post their events to and the driver collects them from, in the order each job sent
    them."""

    def __init__(self):
        self.items: list[dict] = []

    def put(self, item: dict) -> None:
        self.items.append(item)

    def take(self) -> list[dict]:
        items, self.items = self.items, []
        return items


class RayEvents(Events):
    """A job's events, posted to the driver's Board (fire and forget: a job never waits for its driver)."""

    def __init__(self, board, key: str, task: str):
        self.board, self.key, self.ray_task = board, key, task

    def emit(self, what: str, **fields: Any) -> None:
        self.board.put.remote({"key": self.key, "what": what, "time": time.time(), **fields})


def run_remote(fn: Callable[..., dict], args: tuple, key: str, board) -> dict:
    """A job inside its Ray worker: say where it runs, then run it."""
    import ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    context = ray.get_runtime_context()
    events = RayEvents(board, key, context.get_task_id() or "")
    events.emit("started", node=context.get_node_id(), host=socket.gethostname(), pid=os.getpid(),
                gpus=[str(g) for g in ray.get_gpu_ids()])
    return fn(*args, events=events)


def probe(path: str, token: str, must_exist: list[str]) -> dict:
    """On one node: write a probe file into the run directory, and say which of the data paths it cannot see."""
    folder = Path(path) / ".nodes"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{token}.probe").write_text(socket.gethostname())
        error = ""
    except OSError as e:
        error = str(e)
    return {"host": socket.gethostname(), "error": error, "missing": [p for p in must_exist if not Path(p).exists()]}


@dataclass
class Row:
    """One job's line of the summary table."""

    key: str
    node: str = "-"
    gpus: str = "-"
    attempts: int = 0
    epochs: int = 0
    started: float = field(default_factory=time.time)
    result: dict = field(default_factory=dict)


class RayExecutor:
    """Each job a Ray task: one GPU (or cluster.cpus CPUs) each, spread over the nodes, retried when its worker
    dies; the driver waits, prints each event as one line, and a table at the end."""

    name = "ray"

    def __init__(self, cluster: ClusterConfig, parallel: int = 1):
        self.cluster = cluster
        self.ray = import_ray()
        local_gpus = None
        if parallel > 1 and cluster.executor != "ray":  # predict --gpus N: at most N of this machine's GPUs
            import torch

            local_gpus = min(parallel, torch.cuda.device_count()) or None
        self.where = connect(cluster, local_gpus)
        self.rows: dict[str, Row] = {}

    def options(self) -> dict:
        c, has_gpus = self.cluster, self.ray.cluster_resources().get("GPU", 0) > 0
        return {"num_cpus": c.cpus, "num_gpus": c.gpus if has_gpus else 0, "resources": dict(c.resources),
                "max_retries": c.retries, "retry_exceptions": False, "scheduling_strategy": "SPREAD"}

    def check_shared(self, run_dir: Path, must_exist: Sequence[Path] = ()) -> None:
        """A probe task on every live node writes into run_dir; this machine must see each file, and each node the
        data paths; else a one-line refusal naming the node and the path."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        run_dir.mkdir(parents=True, exist_ok=True)
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        prober = self.ray.remote(probe)
        tokens = {n["NodeID"]: uuid.uuid4().hex for n in nodes}
        refs = {n["NodeID"]: prober.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(run_dir), tokens[n["NodeID"]], [str(p) for p in must_exist])
            for n in nodes}
        try:
            for node in nodes:
                seen = self.ray.get(refs[node["NodeID"]], timeout=120)
                where = f"node {node['NodeManagerAddress']} ({seen['host']})"
                if seen["error"]:
                    raise UserError(f"{where} cannot write the run directory {run_dir}: {seen['error']}; every node "
                                    "needs it at the same path (NFS, a mounted bucket: docs/cluster.md)")
                if not (run_dir / ".nodes" / f"{tokens[node['NodeID']]}.probe").is_file():
                    raise UserError(f"{where} does not share the run directory {run_dir}: a file it wrote there is "
                                    "not here; mount the same folder at the same path on every node (NFS, a "
                                    "mounted bucket: docs/cluster.md)")
                if seen["missing"]:
                    raise UserError(f"{where} cannot see {seen['missing'][0]}: every node needs the data at the same "
                                    "path as this machine (docs/cluster.md)")
        finally:
            for token in tokens.values():
                (run_dir / ".nodes" / f"{token}.probe").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (run_dir / ".nodes").rmdir()
        log.info("ray: %d node(s) on %s share %s", len(nodes), self.where, run_dir)

    def run(self, jobs: Sequence[Job]) -> list[dict]:
        board = self.ray.remote(num_cpus=0)(Board).remote()
        remote = self.ray.remote(run_remote)
        options = self.options()
        refs = {remote.options(name=job.key, **options).remote(job.fn, job.args, job.key, board): job for job in jobs}
        self.rows = {job.key: Row(job.key) for job in jobs}
        log.info("ray: %d job(s), each asking for %s", len(jobs), describe(options))
        results: dict[str, dict] = {}
        try:
            pending = list(refs)
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1, timeout=1.0)
                self.show(self.ray.get(board.take.remote()))
                for ref in done:
                    results[refs[ref].key] = self.finished(refs[ref], ref)
            self.show(self.ray.get(board.take.remote()))
        except KeyboardInterrupt:
            self.cancel(refs)
            raise UserError("interrupted: the Ray tasks were cancelled and their fold locks freed; every fold "
                            "resumes from its last.pt when you run the same command again") from None
        except BaseException:
            self.cancel(refs)
            raise
        log.info("ray: summary\n%s", self.table())
        return [results[job.key] for job in jobs]

    def finished(self, job: Job, ref) -> dict:
        """The job's result, or its error as the one line it would have given here."""
        row = self.rows[job.key]
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            cause = e.cause
            if isinstance(cause, UserError):
                raise UserError(f"{job.key}: {cause}") from None
            raise UserError(f"{job.key} failed on node {row.node}: {type(cause).__name__}: {cause} (its log: the "
                            "run's train.log, or /tmp/ray/session_latest/logs on that node)") from None
        except self.ray.exceptions.RayError as e:
            raise UserError(f"{job.key}: its worker died {row.attempts} time(s), last on node {row.node} "
                            f"({type(e).__name__}); rerun the same command to resume it from its last.pt") from None
        row.result = result
        log.info("%s: %s in %.1f min%s", job.key, result.get("state", "finished"), (time.time() - row.started) / 60,
                 f": {result['line']}" if result.get("line") else "")
        return result

    def show(self, events: list[dict]) -> None:
        """One log line per event, as the driver hears it."""
        for e in events:
            row = self.rows[e["key"]]
            if e["what"] == "started":
                row.attempts += 1
                if row.attempts > 1:
                    log.warning("%s: retried (attempt %d): its worker on node %s died", row.key, row.attempts,
                                row.node)
                row.node, row.gpus, row.started = f"{e['host']} ({e['node'][:8]})", ",".join(e["gpus"]) or "-", e["time"]
                log.info("%s: started on node %s, %s, pid %s", row.key, row.node,
                         f"GPU {row.gpus}" if e["gpus"] else "CPU", e["pid"])
            elif e["what"] == "epoch":
                row.epochs = e["epoch"]
                log.info("%s: epoch %d/%d %s %.4f", row.key, e["epoch"], e["epochs"], e["metric"], e["score"])
            else:
                log.info("%s: %s", row.key, e.get("line", e["what"]))

    def cancel(self, refs: dict) -> None:
        """Cancel every task (killing its worker) and free the fold locks they held."""
        for ref in refs:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        with contextlib.suppress(Exception):
            self.ray.wait(list(refs), num_returns=len(refs), timeout=10)
        tasks = {ref.task_id().hex() for ref in refs}
        for job in refs.values():
            if job.lock is not None and FoldLock(job.lock).info().get("ray_task") in tasks:
                job.lock.unlink(missing_ok=True)

    def table(self) -> str:
        lines = [f"{'job':<16} {'node':<24} {'gpu':<5} {'attempts':>8} {'epochs':>6} {'minutes':>7}  result"]
        for row in self.rows.values():
            minutes = row.result.get("minutes", (time.time() - row.started) / 60)
            lines.append(f"{row.key:<16} {row.node[-24:]:<24} {row.gpus:<5} {row.attempts:>8} "
                         f"{row.result.get('epochs', row.epochs):>6} {minutes:>7.1f}  "
                         f"{row.result.get('line') or row.result.get('state', '')}")
        return "\n".join(lines)


def describe(options: dict) -> str:
    parts = [f"{options['num_gpus']:g} GPU" if options["num_gpus"] else f"{options['num_cpus']:g} CPU",
             *(f"{v:g} {k}" for k, v in options["resources"].items())]
    return ", ".join(parts) + f", {options['max_retries']} retries"
