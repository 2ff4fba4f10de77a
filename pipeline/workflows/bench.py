"""Throughput against the bare compute loop: what the pipeline adds to the model's own forward and backward.

    pipeline bench --config configs/dev/bench.yaml [--batch-sizes 32,64,128] [--steps 20]      (make bench)

Each measurement runs in a fresh process, so its peak memory is its own. Parts: (a) a bare loop on a
synthetic batch in memory and (b) the pipeline's train_epoch on the real loader, one epoch stepped in a
thread, timed in alternating chunks of two steps in one process (a shared CPU's speed drifts ~6% between
processes, and by as much within a minute); (c) the loader alone, without
and with the decoded cache; (d) prediction per TTA view set; (e) `pipeline ensemble` on N members; (f) with
--text-config, (a) and (b) for a text model: the bare loop replays the loader's own padded batches from the device;
(g) with --segment-config, the same for a segmentation model (images and masks: a bare smp loop on the same batches).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from queue import Empty

import numpy as np
import torch

from pipeline.core.config import Config
from pipeline.tasks import TASKS, Task


def _peak_mb() -> float:
    """This process's peak resident memory (CPU), or the peak CUDA allocation when on a GPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _setup(cfg: Config):
    """(task, model on device, device, dtype, fold-0 train rows, valid rows) as `pipeline train` builds them."""
    from pipeline.core.seeding import seed_everything
    from pipeline.data.folds import load_folds
    from pipeline.engine.loop import pick_device, resolve_precision
    from pipeline.tasks import build_task

    seed_everything(cfg.seed)
    folds = load_folds(cfg)
    task = build_task(cfg, folds.classes)
    train_rows, valid_rows = folds.split(0)
    task.fit_fold(train_rows)  # what `pipeline train` fits per fold (a vocabulary, a tokenizer, a target's scale)
    model = task.build_model()
    device = pick_device()
    model.to(device, memory_format=task.memory_format)
    return task, model, device, resolve_precision(cfg.train.precision, device), train_rows, valid_rows


def auto_batch_config(cfg: Config) -> Config:
    """cfg with train.batch_size=auto resolved as `pipeline train` resolves it for fold 0 (pipeline.engine.autobatch)."""
    from pipeline.engine.autobatch import resolve_batch_size

    task, model, device, _, train_rows, _ = _setup(cfg)
    return resolve_batch_size(cfg, task, model, task.build_dataset(train_rows, train=True), device)


def bare_runner(cfg: Config, task: Task, device, dtype):
    """(a) the limit: forward, loss, backward and an AdamW step on one synthetic batch kept on the device."""
    from pipeline.engine.loop import autocast
    from pipeline.engine.optim import build_optimizer

    model = task.build_model().to(device, memory_format=task.memory_format).train()
    b, size = cfg.train.batch_size, cfg.image.size
    x = torch.randn(b, 3, size, size, device=device).contiguous(memory_format=task.memory_format)
    y = torch.randint(0, len(task.classes), (b,), device=device)
    optimizer = build_optimizer(model, cfg.train, 1e-4)
    criterion = torch.nn.CrossEntropyLoss()

    def run(n: int) -> int:
        for _ in range(n):
            with autocast(device, dtype):
                loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return n * b

    return run


def bare_batches_runner(cfg: Config, task: Task, device, dtype, train_rows, batches: int):
    """(a) for inputs a synthetic batch cannot stand for (padded token sequences, images with their masks): forward,
    the task's loss, backward and an AdamW step of a fresh model on the first `batches` batches the training loader
    yields, collected onto the device first. They are the batches (b) trains on: its loader starts the same epoch
    every time."""
    from pipeline.data.tables import build_loader
    from pipeline.engine.loop import autocast
    from pipeline.engine.optim import build_optimizer

    model = task.build_model().to(device).train()
    loader = build_loader(task.build_dataset(train_rows, train=True), cfg, True, cfg.train.batch_size)
    held = [task.to_device(b, device) for b, _ in zip(loader, range(batches), strict=False)]
    optimizer = build_optimizer(model, cfg.train, 1e-4)

    def run(n: int) -> int:
        samples = 0
        for batch in held[:n]:
            with autocast(device, dtype):
                loss = task.loss(model, batch, mix=False)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            samples += len(batch[0])
        _sync(device)
        return samples

    return run


class Gate:
    """The training loader as one long `train_epoch` sees it, in a thread, a step at a time when the bench says go.

    (b) is then timed in short chunks of one epoch, from the go to the loop asking for its next batch (the step, and
    the loader's work for it, done), while between chunks the loop waits and (a) runs alone. Restarting train_epoch
    per chunk instead timed an epoch's start and end (the loader's first batch, the weights check) as often as its
    steps, and chunks long enough to hide that drifted with the machine: (a) against itself read 0.91 to 1.04."""

    def __init__(self, loader, device):
        self.loader, self.device, self.sampler = loader, device, loader.sampler
        self._go, self._stepped = threading.Semaphore(0), threading.Semaphore(0)
        self._samples, self._error, self._closed, self._thread = 0, None, False, None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = self._batches()
        while True:
            self._go.acquire()
            if self._closed:
                return
            batch = next(batches)  # after the go: the loader's work for a step is inside its chunk's time
            self._samples += len(batch[0])
            yield batch
            self._stepped.release()

    def _batches(self):
        while True:  # epoch after epoch: the bench may take more steps than one epoch holds
            yield from self.loader

    def train(self, step) -> None:
        """The training thread: train_epoch over this gate; an error is kept for the bench to raise."""
        try:
            step()
        except BaseException as error:  # raised in the bench's thread by __call__
            self._error = error
            self._stepped.release()

    def __call__(self, n: int) -> int:
        """Let n steps through, wait for them; the samples they trained on."""
        before = self._samples
        for _ in range(n):
            self._go.release()
        for _ in range(n):
            self._stepped.acquire()
            if self._error is not None:
                raise self._error
        _sync(self.device)
        return self._samples - before

    def close(self) -> None:
        """End the epoch: the loop finishes as at an epoch's end, and its thread with it."""
        self._closed = True
        self._go.release()
        if self._thread is not None:
            self._thread.join()

    def start(self, epoch) -> Gate:
        self._thread = threading.Thread(target=self.train, args=(epoch,), name="bench-train", daemon=True)
        self._thread.start()
        return self


def pipeline_runner(cfg: Config, task: Task, model, device, dtype, train_rows):
    """(b) `pipeline train`'s own train_epoch (EMA, clipping, schedule, augmentation) on the real loader: one epoch
    running in a thread, stepped through a Gate."""
    from pipeline.data.tables import build_loader
    from pipeline.engine.loop import train_epoch
    from pipeline.engine.state import TrainingState

    loader = build_loader(task.build_dataset(train_rows, train=True), cfg, True, cfg.train.batch_size)
    state = TrainingState.build(model, cfg, len(loader), device, dtype, task.memory_format)
    gate = Gate(loader, device)
    return gate.start(partial(train_epoch, task, state, gate, cfg, 0, max_steps=2**62))  # stopped by gate.close()


def training(cfg: Config, steps: int, warmup: int, chunk: int = 2) -> dict:
    """(a) and (b) in one process, timed in alternating chunks of `chunk` steps (a, b, a, b, ...): whatever else
    the machine does slows both alike, and the ratio is the median of the chunk pairs' ratios."""
    task, model, device, dtype, train_rows, _ = _setup(cfg)
    bare = bare_batches_runner(cfg, task, device, dtype, train_rows, max(warmup, chunk)) \
        if task.bare_batches else bare_runner(cfg, task, device, dtype)
    runners = {"bare": bare,
               "pipeline": pipeline_runner(cfg, task, model, device, dtype, train_rows)}
    for run in runners.values():
        run(warmup)
    rates = {name: [] for name in runners}
    for _ in range(max(1, steps // chunk)):
        for name, run in runners.items():
            started = time.perf_counter()
            samples = run(chunk)
            rates[name].append(samples / (time.perf_counter() - started))
    runners["pipeline"].close()
    ratios = [p / b for b, p in zip(rates["bare"], rates["pipeline"], strict=True)]
    return {"bare": float(np.median(rates["bare"])), "pipeline": float(np.median(rates["pipeline"])),
            "ratio": float(np.median(ratios)), "peak MB": _peak_mb()}


def loader_only(cfg: Config, batches: int, warmup: int) -> dict:
    """(c) the training loader alone: decode (or cache read), augment, collate."""
    from pipeline.data.tables import build_loader

    task, _, device, _, train_rows, _ = _setup(cfg)
    loader = build_loader(task.build_dataset(train_rows, train=True), cfg, True, cfg.train.batch_size)
    samples, it = 0, iter(loader)
    for _ in range(warmup):
        next(it)
    started = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        batch = task.to_device(batch, device)  # its device half (normalising, augment.on_gpu) feeds the model too
        samples += len(batch[0])
    _sync(device)
    return {"samples/s": samples / (time.perf_counter() - started), "peak MB": _peak_mb()}


def predict_views(cfg: Config, batches: int, spec: str) -> dict:
    """(d) inference with a TTA view set: samples/s and view-images/s through loop.infer."""
    from pipeline.data.tables import build_loader
    from pipeline.engine.loop import infer

    task, model, device, dtype, _, valid_rows = _setup(cfg)
    rows = valid_rows.iloc[: batches * cfg.predict.batch_size]
    loader = build_loader(task.build_dataset(rows, train=False), cfg, False, cfg.predict.batch_size)
    views = task.views(spec)
    infer(task, model, loader, device, dtype, views)  # warm: worker start, first-call allocations
    _sync(device)
    started = time.perf_counter()
    infer(task, model, loader, device, dtype, views)
    _sync(device)
    seconds = time.perf_counter() - started
    return {"samples/s": len(rows) / seconds, "views": len(views), "view images/s": len(rows) * len(views) / seconds,
            "peak MB": _peak_mb()}


def ensembling(cfg: Config, members: int, rows: int, classes: int, method: str) -> dict:
    """(e) `pipeline ensemble` on N member run directories (predictions stored as predict.dtype), written
    here first; only the stage itself is timed. Peak memory is the whole process's."""
    import shutil
    import tempfile

    from pipeline.stages import ensemble

    runs = Path(tempfile.mkdtemp(prefix="bench-ensemble-", dir=cfg.runs_dir))
    try:
        names = write_members(cfg, runs, members, rows, classes)
        started = time.perf_counter()
        scores = ensemble.run(names, method=method, name="blend", runs_dir=str(runs))
        return {"seconds": time.perf_counter() - started, "cv": scores["cv"], "peak MB": _peak_mb()}
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def write_members(cfg: Config, runs: Path, members: int, rows: int, classes: int) -> list[str]:
    """Member run directories with synthetic OOF/test probabilities that lean toward the truth by varying
    strengths, one member in memory at a time."""
    import pandas as pd

    from pipeline.core.config import Config, dump_yaml, with_values
    from pipeline.core.files import write_csv, write_json, write_parquet, write_text

    rng = np.random.default_rng(0)
    labels = [f"class_{i:03d}" for i in range(classes)]
    target = rng.integers(0, classes, rows)
    ids = pd.Series([f"{i:07d}" for i in range(rows)])
    keys = pd.DataFrame({"id": ids, "target": np.array(labels)[target], "fold": np.arange(rows) % 5})
    test_ids = pd.DataFrame({"id": [f"t{i:07d}" for i in range(rows // 4)]})
    names = []
    for m, strength in enumerate(np.linspace(1.0, 3.0, members)):
        name, run = f"m{m:02d}", runs / f"m{m:02d}"
        run.mkdir(parents=True)
        write_csv(run / "folds.csv", keys[["id", "fold"]])
        write_json(run / "folds.json", {"classes": labels})
        member_cfg = with_values(Config(), {"name": name, "runs_dir": str(runs), "predict.dtype": cfg.predict.dtype,
                                            "tracking.wandb": "disabled"})
        write_text(run / "config.yaml", dump_yaml(member_cfg))
        write_json(run / "scores.json", {"cv": 0.0})
        for part, frame, n in (("oof", keys, rows), ("test", test_ids, len(test_ids))):
            logits = rng.standard_normal((n, classes), dtype=np.float32)
            if part == "oof":
                logits[np.arange(n), target] += strength
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs = (probs / probs.sum(1, keepdims=True)).astype(cfg.predict.dtype)
            write_parquet(run / f"{part}.parquet", pd.concat([frame, pd.DataFrame(probs, columns=labels)], axis=1))
        names.append(name)
    return names


def _child(queue, fn, args) -> None:
    try:
        queue.put(("ok", fn(*args)))
    except Exception as e:  # reported in the table, the other parts still run
        queue.put(("error", f"{type(e).__name__}: {e}"))


def isolated(fn, *args) -> dict:
    """Run fn(*args) in a fresh process and return its result (or {'error': ...})."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    while True:  # a child that dies without reporting (killed, out of memory) must not hang the bench
        try:
            status, value = queue.get(timeout=1.0)
            break
        except Empty:
            if not proc.is_alive():
                status, value = "error", f"process exited with code {proc.exitcode}"
                break
    proc.join()
    return value if status == "ok" else {"error": value}


def _row(part: str, batch, result: dict, base: float | None = None, unit: str = "samples/s") -> list[str]:
    if "error" in result:
        return [part, str(batch), "error", result["error"][:60], ""]
    value = result[unit]
    ratio = f"{value / base:.2f}" if base else ""
    return [part, str(batch), f"{value:,.1f}" + (" s" if unit == "seconds" else ""), ratio, f"{result['peak MB']:,.0f}"]


def run(cfg: Config, batch_sizes: list[int] | None = None, steps: int = 20, warmup: int = 5,
        tta: tuple[str, ...] = ("none", "hflip", "d4"), ensemble: tuple[int, int, int] = (20, 100_000, 176),
        text: Config | None = None, segment: Config | None = None) -> list[list[str]]:
    """Measure every part, print the table, return its rows (text: a text config for part f; segment: a
    segmentation config for part g)."""
    from pipeline.stages import prepare
    from pipeline.tasks.classification.task import build_images
    from pipeline.workflows.demo import DEMOS

    if not cfg.data_path("train_csv").is_file() and Path(cfg.data.root) == Path(DEMOS["classification"].root):
        DEMOS["classification"].write(Path(cfg.data.root))  # configs/bench-demo.yaml on a machine without ../shared
    prepare.run(cfg)
    if cfg.data.cache:
        build_images(cfg, [])  # built here, not inside a timed part
    if cfg.train.batch_size == "auto":  # the batch `pipeline train` would choose here
        cfg = auto_batch_config(cfg)
    rows, bare_rates = training_rows(cfg, batch_sizes or [cfg.train.batch_size], steps, warmup)
    rows += loader_rows(cfg, steps, warmup, bare_rates.get(cfg.train.batch_size, next(iter(bare_rates.values()), None)))
    none = None
    for spec in tta:
        result = isolated(predict_views, cfg, 4, spec)
        none = none or result.get("samples/s")
        rows.append(_row(f"(d) predict, tta={spec} ({result.get('views', '?')} views; x tta=none)",
                         cfg.predict.batch_size, result, none if spec != tta[0] else None))
    n, r, k = ensemble
    for method in ("mean", "weighted"):
        rows.append(_row(f"(e) pipeline ensemble --method {method}: {n} x {r:,} rows x {k} {cfg.predict.dtype}", "",
                         isolated(ensembling, cfg, n, r, k, method), unit="seconds"))
    if text is not None:
        rows += task_rows(text, steps, warmup, "(f) text")
    if segment is not None:
        if not segment.data_path("train_csv").is_file() and Path(segment.data.root) == Path(DEMOS["segmentation"].root):
            DEMOS["segmentation"].write(Path(segment.data.root))
        rows += task_rows(segment, steps, warmup, "(g) segmentation")
    print_table(rows, cfg)
    return rows


def training_rows(cfg: Config, batch_sizes: list[int], steps: int, warmup: int) -> tuple[list[list[str]], dict]:
    """(a) the bare loop and (b) the pipeline's train loop per batch size, and the bare rates (the model's speed)."""
    rows, bare_rates = [], {}
    for b in batch_sizes:
        result = isolated(training, replace(cfg, train=replace(cfg.train, batch_size=b)), steps, warmup)
        if "error" in result:
            rows.append(_row("(a)+(b) training", b, result))
            continue
        base = bare_rates[b] = result["bare"]
        rows.append(_row("(a) bare loop: synthetic batch in memory", b, {**result, "samples/s": base}))
        rows.append(["(b) pipeline train loop, real data" + (" + cache" if cfg.data.cache else ""), str(b),
                     f"{result['pipeline']:,.1f}", f"{result['ratio']:.2f}", ""])
    return rows, bare_rates


def loader_rows(cfg: Config, steps: int, warmup: int, model_rate: float | None) -> list[list[str]]:
    """(c) the loader alone, decoding files and from the decoded cache (and the task's GPU path on CUDA)."""
    rows, b = [], cfg.train.batch_size
    for cache in (False, True):
        c = replace(cfg, data=replace(cfg.data, cache=cache))
        rows.append(_row(f"(c) loader alone, {'decoded cache' if cache else 'decoding files'} (x model rate)",
                         b, isolated(loader_only, c, steps, warmup), model_rate))
    if torch.cuda.is_available() and TASKS[cfg.task].has_gpu_augment:
        c = replace(cfg, augment=replace(cfg.augment, on_gpu=True))
        rows.append(_row("(c) loader alone, GPU path: cached uint8 + device augmentation (x model rate)", b,
                         isolated(loader_only, c, steps, warmup), model_rate))
    return rows


def task_rows(cfg: Config, steps: int, warmup: int, part: str) -> list[list[str]]:
    """(f) a text model's, (g) a segmentation model's bare loop and the pipeline's train loop on the same batches."""
    from pipeline.stages import prepare

    prepare.run(cfg)
    result = isolated(training, cfg, steps, warmup)
    b, what = cfg.train.batch_size, f"{cfg.model.name.rsplit('/', 1)[-1]}, {cfg.name}"
    if "error" in result:
        return [_row(f"{part} training ({what})", b, result)]
    return [_row(f"{part}, bare loop on the loader's batches ({what})", b, {**result, "samples/s": result["bare"]}),
            [f"{part}, pipeline train loop", str(b), f"{result['pipeline']:,.1f}", f"{result['ratio']:.2f}", ""]]


def print_table(rows: list[list[str]], cfg: Config) -> None:
    from pipeline.data.tables import resolve_workers
    from pipeline.engine.loop import pick_device, resolve_precision

    device = pick_device()
    header = ["part", "batch", "rate", "ratio", "peak MB"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"bench: {cfg.model.name}, {cfg.image.size} px, {str(resolve_precision(cfg.train.precision, device))[6:]}, "
          f"{'channels_last' if cfg.train.channels_last else 'NCHW'}, {device}, {torch.get_num_threads()} threads, "
          f"{resolve_workers(cfg.train.num_workers)} loader workers")
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))))
