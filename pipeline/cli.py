"""The `pipeline` command: a thin Typer shell over pipeline.stages.<stage>.run(cfg, ...).

    pipeline prepare --config configs/leaves.yaml
    pipeline train --config configs/leaves.yaml --fold 0 --set train.epochs=5
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import typer

from pipeline.core.config import ImageConfig, load_config, with_values
from pipeline.core.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Kaggle competition pipeline: prepare -> train -> predict -> ensemble -> submit.",
)

ConfigOpt = typer.Option(..., "--config", "-c", help="YAML config, e.g. configs/leaves.yaml", exists=False)
SetOpt = typer.Option(None, "--set", "-s", help="override a config key, repeatable: --set train.epochs=5")
OnOpt = typer.Option(None, "--on", help="local (in this process) | ray (Ray tasks, one GPU each; cluster.executor)")
RayAddressOpt = typer.Option(None, "--ray-address", help="the Ray cluster to join (cluster.address; default "
                             "$RAY_ADDRESS, else a Ray instance on this machine)")


def cluster_sets(on: str | None, ray_address: str | None) -> list[str]:
    """--on and --ray-address as the config keys they set."""
    if on not in (None, "local", "ray"):
        raise UserError(f"--on {on!r}: choose local or ray")
    return [*([f"cluster.executor={on}"] if on else []), *([f"cluster.address={ray_address}"] if ray_address else [])]


def user_errors(fn):
    """User errors print one line on stderr and exit 2; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; rerun the same command to resume from the last checkpoint", err=True)
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def prepare(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    force: bool = typer.Option(False, "--force", help="reassign folds even if folds.csv is up to date"),
) -> None:
    """Check the competition files and images, assign folds -> runs/<exp>/folds.csv.

    Example: pipeline prepare --config configs/leaves.yaml --set cv.folds=10
    """
    from pipeline.stages import prepare as stage

    stage.run(load_config(config, set_ or []), force=force)


@app.command()
@user_errors
def drift(
    experiment: str = typer.Argument(..., help="experiment name under runs/ (or its directory)"),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="where the experiments live"),
) -> None:
    """Adversarial validation: a train-vs-test classifier's AUC on cheap per-sample features (0.5: the test set
    looks like train), the features that separate most -> runs/<exp>/adversarial.json, adversarial.csv.

    Example: pipeline drift leaves-effnet-lite0
    """
    from pipeline.stages import drift as stage

    stage.run(experiment, runs_dir=runs_dir)


@app.command()
@user_errors
def train(
    config: Path = ConfigOpt,
    fold: str = typer.Option("all", "--fold", "-f",
                             help="fold number, 'all' for each fold in turn, or 'full' (every row, after the folds)"),
    set_: list[str] = SetOpt,
    force: bool = typer.Option(False, "--force", help="retrain finished folds from scratch"),
    deterministic: bool = typer.Option(False, "--deterministic",
                                       help="deterministic CUDA kernels, slower (same as --set train.deterministic=true)"),
    on: str = OnOpt,
    ray_address: str = RayAddressOpt,
) -> None:
    """Train fold K (resuming from last.pt) and write its OOF predictions -> runs/<exp>/fold{K}/.

    Example: pipeline train --config configs/leaves.yaml --fold 0 --set train.epochs=5
             pipeline train --config configs/leaves.yaml --fold all --on ray      (one fold per GPU, any node)
    """
    from pipeline.stages import train as stage

    cfg = load_config(config, [*(set_ or []), *(["train.deterministic=true"] if deterministic else []),
                               *cluster_sets(on, ray_address)])
    stage.run(cfg, fold=fold, force=force)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("timm", "wandb", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
@user_errors
def predict(
    config: Path = ConfigOpt,
    fold: str = typer.Option("all", "--fold", "-f", help="fold number(s) (0 or 0,2), 'all' trained folds (and a "
                             "finished full-data refit), or 'full' (the refit's test predictions alone)"),
    tta: str = typer.Option(None, "--tta", help="none | hflip | vflip | flips | d4 | view list (default: predict.tta)"),
    weights: str = typer.Option(None, "--weights", help="best | ema | avg | auto (default: predict.weights)"),
    gpus: int = typer.Option(1, "--gpus", help="predict N folds at once, one per device (Ray tasks on this machine)"),
    combine: bool = typer.Option(True, "--combine/--no-combine", help="write oof/test.parquet and scores.json after "
                                 "the folds (--no-combine: a worker's fold files only)"),
    set_: list[str] = SetOpt,
    on: str = OnOpt,
    ray_address: str = RayAddressOpt,
) -> None:
    """OOF + test predictions per fold with TTA; combined oof/test.parquet and scores.json (the CV).

    Example: pipeline predict --config configs/leaves.yaml --tta d4 --weights avg      make predict GPUS=4
    """
    from pipeline.stages import predict as stage

    stage.run(load_config(config, [*(set_ or []), *cluster_sets(on, ray_address)]), fold=fold, tta=tta, weights=weights, gpus=gpus, combine=combine)


@app.command()
@user_errors
def ensemble(
    experiments: list[str] = typer.Argument(..., help="experiment names under runs/ (or run directories)"),
    method: str = typer.Option("weighted", "--method", "-m",
                               help="mean | weighted | rank | geometric | stack; detection: mean | weighted (= wbf)"),
    name: str = typer.Option(None, "--name", "-n", help="name of the ensemble's run directory"),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="where the experiments live"),
) -> None:
    """Blend experiments' predictions; weights/meta-model fitted on OOF only -> runs/<name>/.

    Example: pipeline ensemble leaves-effnet leaves-resnet --method weighted --name blend
    """
    from pipeline.stages import ensemble as stage

    stage.run(experiments, method=method, name=name, runs_dir=runs_dir)


@app.command()
@user_errors
def submit(
    experiment: str = typer.Argument(..., help="experiment or ensemble name under runs/ (or its directory)"),
    out: str = typer.Option(None, "--out", "-o", help="CSV path (default: submissions/<exp>.csv)"),
    message: str = typer.Option("", "--message", "-m", help="note stored in submissions/log.csv (and on Kaggle)"),
    lb: float = typer.Option(None, "--lb", help="record the public LB score of this experiment's last submission"),
    kaggle: str = typer.Option(None, "--kaggle", help="also upload to this competition and record its public score"),
    wait: float = typer.Option(5.0, "--wait", help="minutes to wait for Kaggle's score (then `pipeline lb` fills it)"),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="where the experiments live"),
) -> None:
    """Write the submission CSV, validated against sample_submission.csv; log it in submissions/log.csv.

    Example: pipeline submit blend --message "effnet+resnet, d4 TTA" --kaggle classify-leaves
    (or, uploaded by hand: pipeline submit blend --lb 0.961)
    """
    from pipeline.stages import submit as stage

    stage.run(experiment, out=out, message=message, lb=lb, runs_dir=runs_dir, kaggle=kaggle, wait=wait)


@app.command()
@user_errors
def init(
    data_dir: Path = typer.Argument(..., help="the competition's folder: train.csv, test.csv, sample_submission.csv ..."),
    name: str = typer.Option(None, "--name", "-n", help="experiment name (default: the folder's name)"),
    out: Path = typer.Option(None, "--out", "-o", help="config file to write (default: configs/<name>.yaml)"),
    weights_file: str = typer.Option(None, "--weights-file", help="ImageNet weights on disk instead of the hub "
                                     "(a file from `pipeline weights save`)"),
    force: bool = typer.Option(False, "--force", help="replace an existing config (and remake its folds)"),
) -> None:
    """Infer task, columns, target type, metric and image folder from a competition's files, write a config with
    the evidence of every line, and run prepare's checks on it.

    Example: pipeline init data/classify-leaves --name leaves      then   pipeline train --config configs/leaves.yaml --fold 0
    """
    from pipeline.workflows import init as flow

    typer.echo(str(flow.run(data_dir, name=name, out=out, force=force, weights_file=weights_file)))


weights_app = typer.Typer(help="Pretrained weights as files, for Kaggle notebooks and machines without internet.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("save")
@user_errors
def weights_save(
    model: str = typer.Argument(..., help="a timm model name, e.g. tf_efficientnet_lite0 or convnext_tiny.fb_in22k"),
    out: Path = typer.Option(..., "--out", "-o", help="the .safetensors file to write (model.weights_file reads it)"),
    source: str = typer.Option(None, "--from", help="read the pretrained weights from this file instead of the hub"),
) -> None:
    """Write a timm model's pretrained (ImageNet) weights to one file: where there is internet, for a Kaggle
    dataset or an offline machine, whose config then sets model.weights_file to it.

    Example: pipeline weights save tf_efficientnet_lite0 --out weights/lite0.safetensors
    """
    from pipeline.engine.models import save_pretrained

    n = save_pretrained(model, out, source)
    typer.echo(f"{out} ({n} tensors of {model}); set model.weights_file: {out}")


@app.command()
@user_errors
def download(
    competition: str = typer.Argument(..., help="the competition's name as in its URL, e.g. classify-leaves"),
    to: Path = typer.Option(None, "--to", help="folder to fill (default: data/<competition>)"),
    force: bool = typer.Option(False, "--force", help="replace a folder that is not empty"),
) -> None:
    """Download and unzip a competition's files with the official Kaggle client; print the config lines for them.

    Example: pipeline download classify-leaves --to data/classify-leaves
    """
    from pipeline.stages import download as stage

    folder = stage.run(competition, to=to, force=force)
    typer.echo("\n".join(stage.config_lines(folder)))


@app.command()
@user_errors
def lb(
    competition: str = typer.Argument(..., help="the competition the submissions went to"),
    submissions_dir: str = typer.Option("submissions", "--submissions-dir", help="where submit wrote log.csv"),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="where the experiments live"),
) -> None:
    """Fill every missing public (and, after the deadline, private) score of submissions/log.csv from Kaggle.

    Example: pipeline lb classify-leaves
    """
    from pipeline.stages import lb as stage

    stage.run(competition, submissions_dir=submissions_dir, runs_dir=runs_dir)


@app.command()
@user_errors
def dashboard(
    project: str = typer.Option(None, "--project", help="W&B project (default: tracking.project of the config)"),
    entity: str = typer.Option(None, "--entity", help="W&B entity (team or user); needed to save online"),
    config: Path = typer.Option(None, "--config", "-c", help="a config whose tracking section names the project"),
    out: Path = typer.Option(Path("runs/dashboard.json"), "--out", help="where the spec goes when offline"),
) -> None:
    """The W&B workspace of docs/wandb.md built in code: experiments by CV with their LB, CV vs LB, learning
    curves, the leaderboard table, tuning's parallel coordinates. Saved online; its spec written offline.

    Example: pipeline dashboard --project kaggle-pipeline --entity my-team
    """
    from pipeline.core.config import Config
    from pipeline.reporting import dashboard as stage
    from pipeline.runs.tracking import resolve_mode

    cfg = load_config(config, []) if config else Config()
    where = stage.run(project or cfg.tracking.project, entity or cfg.tracking.entity, out,
                      resolve_mode(cfg.tracking.wandb))
    typer.echo(str(where))


@app.command()
@user_errors
def distill(
    teacher: str = typer.Argument(..., help="the teacher: an ensemble of experiments (or one experiment) under runs/"),
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    alpha: float = typer.Option(None, "--alpha", help="the hard label's share of each target (default distill.alpha, 0.5)"),
    test: bool = typer.Option(None, "--test/--no-test", help="also learn the teachers' test predictions (distill.test)"),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="where the teacher lives"),
    on: str = OnOpt,
    ray_address: str = RayAddressOpt,
) -> None:
    """Train a student on the teacher's folds, fold k learning from fold k's teachers only; then predict it
    -> runs/<student>/ like any experiment (its CV is honest).

    Example: pipeline distill blend --config configs/leaves-student.yaml --test
    """
    from pipeline.workflows import distill as stage

    stage.run(teacher, load_config(config, [*(set_ or []), *cluster_sets(on, ray_address)]), runs_dir=runs_dir,
              alpha=alpha, test=test)


@app.command()
@user_errors
def pseudo(
    experiment: str = typer.Argument(..., help="the labelling experiment under runs/ (predicted: its fold test predictions)"),
    name: str = typer.Option(..., "--name", "-n", help="the new experiment's name (runs/<name>/)"),
    threshold: str = typer.Option(None, "--threshold", help="auto (OOF precision reaches pseudo.precision, 0.95) or a "
                                  "confidence such as 0.9 (default pseudo.threshold: auto)"),
    soft: bool = typer.Option(None, "--soft/--hard", help="train on the model's probabilities instead of its decisions"),
    weight: float = typer.Option(None, "--weight", help="share of the pseudo rows drawn into each epoch, (0, 1] (default 1)"),
    set_: list[str] = SetOpt,
    runs_dir: str = typer.Option("runs", "--runs-dir", help="where the experiments live"),
) -> None:
    """A new experiment on EXP's folds whose fold k also trains on the test rows EXP's fold-k model labels
    confidently (its CV stays honest) -> runs/<name>/; then train, predict and submit it as usual.

    Example: pipeline pseudo leaves-effnet-lite0 --name leaves-pl && pipeline train --config runs/leaves-pl/config.yaml --fold all
    """
    from pipeline.workflows import pseudo as stage

    stage.run(experiment, name, set_ or [], runs_dir=runs_dir, threshold=threshold, soft=soft, weight=weight)


@app.command()
@user_errors
def export(
    experiment: str = typer.Argument(..., help="experiment or ensemble name under runs/ (or its directory)"),
    out: Path = typer.Option(None, "--out", "-o", help="export folder (default: exports/<exp>)"),
    folds: str = typer.Option(None, "--folds", help="comma-separated folds to keep, e.g. 0,1,2 or 0,full (default: all predicted, "
                         "and the full-data refit where predict used it)"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 (submits exactly what `submit` would) | fp16 (half the size)"),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="where the experiments live"),
    force: bool = typer.Option(False, "--force", help="replace an existing export folder"),
    kaggle_dataset: str = typer.Option(None, "--kaggle-dataset", help="create or version this Kaggle dataset "
                                       "(OWNER/SLUG) from the export"),
    kaggle_kernel: bool = typer.Option(False, "--kaggle-kernel", help="also push the export's notebook, bound to "
                                       "the dataset and the competition"),
    kaggle: str = typer.Option(None, "--kaggle", help="the competition the notebook reads (default: the data "
                               "folder's name)"),
) -> None:
    """The inference-only folder of an experiment or ensemble: fold weights (safetensors), recipes, blend,
    manifest with sha256s, the package wheel and a Kaggle notebook -> exports/<exp>/.

    Example: pipeline export blend --out exports/blend --dtype fp16 --kaggle-dataset me/blend-export --kaggle-kernel
    """
    from pipeline.stages import export as stage

    if kaggle_kernel and not kaggle_dataset:
        raise UserError("--kaggle-kernel pushes a notebook bound to the export's dataset: add --kaggle-dataset OWNER/SLUG")
    chosen = None if folds is None else stage.parse_fold_list(folds)
    path = stage.run(experiment, out=out, folds=chosen, dtype=dtype, runs_dir=runs_dir, force=force)
    if kaggle_dataset:
        from pipeline.stages import publish

        publish.run(path, kaggle_dataset, kernel=kaggle_kernel, competition=kaggle)


@app.command()
@user_errors
def infer(
    export: Path = typer.Argument(..., help="a folder made by `pipeline export`"),
    data: Path = typer.Option(..., "--data", "-d", help="competition folder: test.csv, sample_submission.csv, test files"),
    test_csv: str = typer.Option(None, "--test-csv", help="test table inside --data (default: training's name)"),
    sample_submission: str = typer.Option(None, "--sample-submission", help="sample submission inside --data"),
    out: Path = typer.Option(Path("submission.csv"), "--out", "-o", help="submission CSV to write"),
    batch_size: int = typer.Option(None, "--batch-size", help="inference batch size (default: the recipe's)"),
    device: str = typer.Option(None, "--device", help="cpu | cuda | cuda:1 (default: the GPU if there is one)"),
    max_minutes: float = typer.Option(None, "--max-minutes", help="drop TTA views, then folds, to fit this estimate"),
    max_pixels: int = typer.Option(ImageConfig.max_pixels, "--max-pixels",
                                   help="refuse a test image whose header declares more pixels (0: no limit)"),
) -> None:
    """Predict a competition folder from an export alone (no train.csv, runs/, W&B or network) -> a submission
    validated as `pipeline submit` validates it.

    Example: pipeline infer exports/blend --data /kaggle/input/classify-leaves --out /kaggle/working/submission.csv
    """
    from pipeline.stages import infer as stage

    stage.run(export, data, out=out, test_csv=test_csv, sample_submission=sample_submission, batch_size=batch_size,
              device=device, max_minutes=max_minutes, max_pixels=max_pixels)


@app.command()
@user_errors
def demo(
    task: str = typer.Option("classification", "--task",
                             help="classification (digit images) | detection (digits on canvases) | sequence (digit "
                             "rows) | segmentation (digit strokes on noisy canvases)"),
    root: str = typer.Option(None, "--root", help="where the embedded competition is written (default data/demo-*)"),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="where the demo experiments go"),
    set_: list[str] = SetOpt,
) -> None:
    """The whole pipeline on embedded data (digits as PNGs): prepare, train, TTA predict, ensemble, submit.

    Example: pipeline demo --set train.epochs=3      pipeline demo --task detection
    """
    from pipeline.workflows import demo as stage

    stage.run(task=task, root=root, runs_dir=runs_dir, overrides=set_ or [])


@app.command()
@user_errors
def bench(
    config: Path = typer.Option(Path("configs/bench-demo.yaml"), "--config", "-c", help="YAML config to measure (make bench: configs/dev/bench.yaml where ../shared is)"),
    batch_sizes: str = typer.Option(None, "--batch-sizes", help="comma list, e.g. 32,64,128 (default: train.batch_size)"),
    steps: int = typer.Option(20, "--steps", help="timed steps per measurement, after 5 warm-up steps"),
    ensemble: str = typer.Option("20x100000x176", "--ensemble", help="members x rows x classes for the blend timing"),
    text_config: Path = typer.Option(None, "--text-config", help="also time a text model's loop (its own config)"),
    segment_config: Path = typer.Option(None, "--segment-config", help="also time a segmentation model's loop"),
    set_: list[str] = SetOpt,
) -> None:
    """Samples/s of the bare compute loop vs the pipeline's loop, the loader, TTA and ensembling; peak memory.

    Example: pipeline bench --config configs/dev/bench.yaml --batch-sizes 32,64,128
    """
    from pipeline.workflows import bench as stage

    try:
        sizes = [int(b) for b in batch_sizes.split(",")] if batch_sizes else None
        shape = tuple(int(v) for v in ensemble.lower().split("x"))
    except ValueError:
        raise UserError("--batch-sizes is a comma list of integers, --ensemble is MEMBERSxROWSxCLASSES") from None
    quiet = {"tracking.wandb": "disabled", "tracking.quiet": True}
    text = with_values(load_config(text_config), {"name": "bench-text", **quiet}) if text_config else None
    segment = with_values(load_config(segment_config), {"name": "bench-segment", **quiet}) if segment_config else None
    stage.run(load_config(config, set_ or []), sizes, steps=steps, ensemble=shape, text=text, segment=segment)


@app.command()
@user_errors
def tune(
    config: Path = ConfigOpt,
    trials: int = typer.Option(None, "--trials", "-n", help="finished trials, all workers together (tune.trials, 16)"),
    param: list[str] = typer.Option(None, "--param", "-p", help="searched key, repeatable: train.base_lr=log:1e-4:1e-2, "
                                    "model.drop_rate=uniform:0:0.5, int:LOW:HIGH, choice:A|B (default: tune.space, "
                                    "else LR, weight decay, dropout, label smoothing around the config)"),
    sampler: str = typer.Option(None, "--sampler", help="tpe (default), random, cmaes or gp"),
    pruner: str = typer.Option(None, "--pruner", help="hyperband (default), median or none"),
    folds: str = typer.Option(None, "--folds", help="folds each trial trains and is scored on: 0 (default), 0,1, all"),
    objective: str = typer.Option(None, "--objective", help="score (default), or score,infer for a Pareto front"),
    storage: str = typer.Option(None, "--storage", help="the study's storage: sqlite in runs/<exp>/tune/study.db "
                                "(default), an SQLAlchemy URL, or journal:/shared/path/study.log"),
    workers: int = typer.Option(None, "--workers", help="workers drawing trials at once, one GPU each: Ray tasks on this "
                                "machine, or on a cluster with --on ray (tune.workers, 1)"),
    set_: list[str] = SetOpt,
    force: bool = typer.Option(False, "--force", help="delete the study and its trial folders and start again"),
    on: str = OnOpt,
    ray_address: str = RayAddressOpt,
) -> None:
    """An Optuna study (TPE, Hyperband pruning) over config keys; workers and machines share it -> runs/<exp>/tune/.

    Example: pipeline tune --config configs/leaves.yaml --trials 24 --param train.base_lr=log:1e-4:1e-2 --workers 2
    """
    from pipeline.workflows import tune as stage

    chosen = {"trials": trials, "sampler": sampler, "pruner": pruner, "folds": folds, "objective": objective,
              "storage": storage, "workers": workers}
    overrides = [*(set_ or []), *(f"tune.{k}={v}" for k, v in chosen.items() if v is not None),
                 *cluster_sets(on, ray_address)]
    table = stage.run(stage.Search(str(config) if config else None, overrides, param or [], force))
    typer.echo(stage.render(table, table.attrs["metric"]))


@app.command()
@user_errors
def runs(
    runs_dir: str = typer.Option("runs", "--runs-dir", help="where the experiments live"),
    submissions_dir: str = typer.Option("submissions", "--submissions-dir", help="where submit wrote log.csv"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON for scripts"),
) -> None:
    """Every experiment, best CV first: model, image size, folds done, TTA, CV ± std, public LB, submission.

    Example: pipeline runs      pipeline runs --json | jq '.[0].exp'
    """
    from pipeline.stages import leaderboard

    table = leaderboard.experiments(runs_dir, submissions_dir)
    if as_json:
        typer.echo(table.astype(object).where(table.notna(), None).to_json(orient="records", indent=2))
    else:
        typer.echo(leaderboard.render(table))


@app.command()
@user_errors
def report(
    exp: str = typer.Argument(..., help="experiment name under --runs-dir, or a run directory"),
    runs_dir: str = typer.Option("runs", "--runs-dir", help="where the experiments live"),
    screenshot: bool = typer.Option(False, "--screenshot", help="also render the page to report.png (needs pymupdf)"),
) -> None:
    """An HTML page of one experiment: learning curves, OOF confusion matrix and per-class scores, the
    highest-loss OOF images, CV vs public LB -> runs/<exp>/report.html (PNGs in runs/<exp>/report/).

    Example: pipeline report leaves-effnet-lite0 --screenshot
    """
    from pipeline.stages import report as stage

    path = stage.run(exp, runs_dir, screenshot=screenshot)
    typer.echo(str(path))
