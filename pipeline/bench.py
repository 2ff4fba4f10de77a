"""Throughput against the bare compute loop: what the pipeline adds to the model's own forward and backward.

    pipeline bench --config configs/bench.yaml [--batch-sizes 32,64,128] [--steps 20]      (make bench)

Each measurement runs in a fresh process, so its peak memory is its own, and reports the fastest of three
timed chunks, the one least disturbed by the rest of the machine (runs vary by ~5% on a shared CPU). Parts: (a) bare loop on synthetic tensors in memory, (b) the
pipeline's train_epoch on the real loader, (c) the loader alone, without and with the decoded cache,
(d) prediction per TTA view set, (e) ensembling N members x rows x classes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config

log = logging.getLogger(__name__)


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
    from pipeline.folds import load_folds
    from pipeline.loop import pick_device, resolve_precision
    from pipeline.stages.train import seed_everything
    from pipeline.tasks import build_task

    seed_everything(cfg.seed)
    folds = load_folds(cfg)
    task = build_task(cfg, folds.classes)
    model = task.build_model()
    device = pick_device()
    model.to(device, memory_format=task.memory_format)
    train_rows, valid_rows = folds.split(0)
    return task, model, device, resolve_precision(cfg.train.precision, device), train_rows, valid_rows


def bare(cfg: Config, steps: int, warmup: int) -> dict:
    """(a) the limit: forward, loss, backward and an AdamW step on one synthetic batch kept on the device."""
    from pipeline.loop import autocast
    from pipeline.optim import build_optimizer

    task, model, device, dtype, _, _ = _setup(cfg)
    b, size = cfg.train.batch_size, cfg.image.size
    x = torch.randn(b, 3, size, size, device=device).contiguous(memory_format=task.memory_format)
    y = torch.randint(0, len(task.classes), (b,), device=device)
    optimizer = build_optimizer(model, cfg.train, 1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()

    def run(n: int) -> int:
        for _ in range(n):
            with autocast(device, dtype):
                loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return n * b

    run(warmup)
    return {"samples/s": _best_rate(run, steps), "peak MB": _peak_mb()}


def _best_rate(run, steps: int, chunks: int = 3) -> float:
    """Samples/s of the fastest of `chunks` timed runs: the least disturbed by whatever else the machine did."""
    rates = []
    for _ in range(chunks):
        started = time.perf_counter()
        samples = run(max(1, steps // chunks))
        rates.append(samples / (time.perf_counter() - started))
    return max(rates)


def pipeline_loop(cfg: Config, steps: int, warmup: int) -> dict:
    """(b) `pipeline train`'s own train_epoch (EMA, clipping, schedule, augmentation) on the real loader."""
    from pipeline.data import build_loader
    from pipeline.loop import Progress, build_training, train_epoch

    task, model, device, dtype, train_rows, _ = _setup(cfg)
    loader = build_loader(task.build_dataset(train_rows, train=True), cfg, True, cfg.train.batch_size)
    _, optimizer, scheduler, scaler, ema = build_training(model, cfg.train, len(loader), 1, device, dtype)
    progress = Progress()

    def run(n: int) -> int:
        samples = train_epoch(task, model, loader, optimizer, scheduler, scaler, ema, device, dtype, cfg,
                              progress.epoch + 1, progress, n)[1]
        progress.epoch += 1
        _sync(device)
        return samples

    run(warmup)
    return {"samples/s": _best_rate(run, steps), "peak MB": _peak_mb()}


def loader_only(cfg: Config, batches: int, warmup: int) -> dict:
    """(c) the training loader alone: decode (or cache read), augment, collate."""
    from pipeline.data import build_loader

    task, _, _, _, train_rows, _ = _setup(cfg)
    loader = build_loader(task.build_dataset(train_rows, train=True), cfg, True, cfg.train.batch_size)
    samples, it = 0, iter(loader)
    for _ in range(warmup):
        next(it)
    started = time.perf_counter()
    for _ in range(batches):
        try:
            samples += len(next(it)[0])
        except StopIteration:
            it = iter(loader)
    return {"samples/s": samples / (time.perf_counter() - started), "peak MB": _peak_mb()}


def predict_views(cfg: Config, batches: int, spec: str) -> dict:
    """(d) inference with a TTA view set: samples/s and view-images/s through loop.predict."""
    from pipeline.data import build_loader
    from pipeline.loop import predict

    task, model, device, dtype, _, valid_rows = _setup(cfg)
    rows = valid_rows.iloc[: batches * cfg.predict.batch_size]
    loader = build_loader(task.build_dataset(rows, train=False), cfg, False, cfg.predict.batch_size)
    views = task.views(spec)
    predict(task, model, loader, device, dtype, views)  # warm: worker start, first-call allocations
    _sync(device)
    started = time.perf_counter()
    predict(task, model, loader, device, dtype, views)
    _sync(device)
    seconds = time.perf_counter() - started
    return {"samples/s": len(rows) / seconds, "views": len(views), "view images/s": len(rows) * len(views) / seconds,
            "peak MB": _peak_mb()}


def ensembling(members: int, rows: int, classes: int, method: str) -> dict:
    """(e) blending members' OOF and test probabilities (float16 on disk, as predict stores them)."""
    from pipeline.ensemble import blend_probabilities
    from pipeline.metrics import METRICS

    rng = np.random.default_rng(0)
    target = rng.integers(0, classes, rows)
    folds = np.arange(rows) % 5

    def member(strength: float) -> np.ndarray:
        logits = rng.standard_normal((rows, classes), dtype=np.float32)
        logits[np.arange(rows), target] += strength
        logits = np.exp(logits - logits.max(1, keepdims=True))
        return (logits / logits.sum(1, keepdims=True)).astype(np.float16)

    oofs = [member(s) for s in np.linspace(1.0, 3.0, members)]
    tests = [m[: rows // 4] for m in oofs]
    started = time.perf_counter()
    blend = blend_probabilities(method, oofs, tests, target, folds, METRICS["accuracy"])
    return {"seconds": time.perf_counter() - started, "cv": float(METRICS["accuracy"](target, blend.oof)),
            "peak MB": _peak_mb()}


def _child(queue, fn, args) -> None:
    torch.set_num_threads(torch.get_num_threads())
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
    status, value = queue.get()
    proc.join()
    return value if status == "ok" else {"error": value}


def _row(part: str, batch, result: dict, base: float | None = None, unit: str = "samples/s") -> list[str]:
    if "error" in result:
        return [part, str(batch), "error", result["error"][:60], ""]
    value = result[unit]
    ratio = f"{value / base:.2f}" if base else ""
    return [part, str(batch), f"{value:,.1f}" + (" s" if unit == "seconds" else ""), ratio, f"{result['peak MB']:,.0f}"]


def run(cfg: Config, batch_sizes: list[int] | None = None, steps: int = 20, warmup: int = 5,
        tta: tuple[str, ...] = ("none", "hflip", "d4"), ensemble: tuple[int, int, int] = (20, 100_000, 176)) -> list[list[str]]:
    """Measure every part, print the table, return its rows."""
    from pipeline.stages import prepare
    from pipeline.stages.demo import DEMOS
    from pipeline.tasks.classification import build_images

    if not cfg.data_path("train_csv").is_file() and Path(cfg.data.root) == Path(DEMOS["classification"].root):
        DEMOS["classification"].write(Path(cfg.data.root))  # configs/bench-demo.yaml on a machine without ../shared
    prepare.run(cfg)
    if cfg.data.cache:
        build_images(cfg, [])  # built here, not inside a timed part
    rows = []
    for b in batch_sizes or [cfg.train.batch_size]:
        c = replace(cfg, train=replace(cfg.train, batch_size=b))
        limit = isolated(bare, c, steps, warmup)
        rows.append(_row("(a) bare loop: synthetic batch in memory", b, limit))
        base = limit.get("samples/s")
        rows.append(_row("(b) pipeline train loop, real data" + (" + cache" if cfg.data.cache else ""),
                         b, isolated(pipeline_loop, c, steps, warmup), base))
    model_rate = base
    b = cfg.train.batch_size
    for cache in (False, True):
        c = replace(cfg, data=replace(cfg.data, cache=cache))
        rows.append(_row(f"(c) loader alone, {'decoded cache' if cache else 'decoding files'} (x model rate)",
                         b, isolated(loader_only, c, steps, warmup), model_rate))
    none = None
    for spec in tta:
        result = isolated(predict_views, cfg, 4, spec)
        none = none or result.get("samples/s")
        rows.append(_row(f"(d) predict, tta={spec} ({result.get('views', '?')} views; x tta=none)",
                         cfg.predict.batch_size, result, none if spec != tta[0] else None))
    n, r, k = ensemble
    for method in ("mean", "weighted"):
        rows.append(_row(f"(e) ensemble {method}: {n} members x {r:,} rows x {k} classes", "",
                         isolated(ensembling, n, r, k, method), unit="seconds"))
    print_table(rows, cfg)
    return rows


def print_table(rows: list[list[str]], cfg: Config) -> None:
    from pipeline.loop import pick_device, resolve_precision

    device = pick_device()
    header = ["part", "batch", "rate", "ratio", "peak MB"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"bench: {cfg.model.name}, {cfg.image.size} px, {str(resolve_precision(cfg.train.precision, device))[6:]}, "
          f"{'channels_last' if cfg.train.channels_last else 'NCHW'}, {device}, {torch.get_num_threads()} threads, "
          f"{cfg.train.num_workers} workers (-1 = min(8, CPUs))")
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))))
