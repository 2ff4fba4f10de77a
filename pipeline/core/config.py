"""Typed configuration: dataclass defaults, YAML deltas from configs/, and `--set a.b=value` overrides.

    cfg = load_config("configs/leaves.yaml", ["train.epochs=3", "image.size=160"])

A YAML file holds only what differs from the defaults below; `extends: other.yaml` starts from another file.
Unknown keys and wrongly typed values are errors that name the key and suggest the nearest valid one.
Text fields (names, paths) keep the text as written: `--set name=0123` is "0123", never YAML's 83.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.core.errors import UserError


@dataclass
class DataConfig:
    root: str = "data/classify-leaves"  # competition folder; relative paths below are inside it
    train_csv: str = "train.csv"  # one row per training sample
    test_csv: str = "test.csv"  # rows to predict
    sample_submission: str = "sample_submission.csv"  # the format submit validates against
    id_col: str = "image"  # image path relative to root (or to image_dir); also the submission id
    target_col: str = "label"  # target column of train.csv: a label, tags, a value or a grade
    # auto: guessed from the target column and sample_submission, and logged (pipeline.data.labels.infer_target_type);
    # binary: one probability; multilabel: tags; regression: a value; ordinal: grades, cut points fitted on OOF
    target_type: Literal["auto", "multiclass", "binary", "multilabel", "regression", "ordinal"] = "auto"
    # what submit writes: labels (class names, 0/1 tags, grades) or scores (probabilities, unrounded values);
    # auto: what sample_submission holds (prepare logs the evidence; 0/1 placeholders go by train.metric)
    submission_form: Literal["auto", "labels", "scores"] = "auto"
    label_sep: str = " "  # multilabel: the separator of tags in one cell (Kaggle Planet: "clear primary")
    # one 0/1 column per label instead of a tag column (multilabel, Jigsaw), or several value columns (regression,
    # CommonLit/ELL: auto takes numbers that are not all 0/1 for values)
    label_cols: list[str] | None = None
    min_tags: int = 0  # multilabel: tags every row has (train rows are checked; submissions get the top ones)
    group_col: str | None = None  # rows sharing a group stay in one fold (patient, plant, session ...)
    image_dir: str = ""  # folder prefix joined to ids, "" when ids already hold the relative path
    image_ext: str = ""  # suffix appended to ids, e.g. ".jpg" when ids are bare names
    test_image_dir: str | None = None  # where test ids' images are when not in image_dir (TGS: test/images)
    # sample_submission's id column where it is not id_col: one row per image and class, <id>_<class> (Severstal's
    # ImageId_ClassId, task: segmentation)
    sample_id_col: str | None = None
    check_images: bool = True  # prepare decodes every image once; turn off only for huge sets you trust
    allow_outside_root: bool = False  # let ids reach files outside root ('..', absolute paths): a CSV you did
    # not write could otherwise make the pipeline read any file this user can
    dedupe: bool = True  # prepare hashes every image: exact duplicates share a fold, and are reported
    # decode + resize every train/test image once into a uint8 memmap under runs/cache/ that the loader
    # reads: the loader then costs a memory read, not a PNG/JPEG decode (disk: N x side^2 x 3 bytes)
    cache: bool = False
    cache_dir: str = ""  # where data.cache keeps its files; "" = <runs_dir>/cache (tune trials share their experiment's)
    # detection: train.csv has one row per box (id, class in target_col, four box columns); an image with
    # no boxes is a row whose box columns are empty
    box_cols: list[str] = field(default_factory=lambda: ["xmin", "ymin", "xmax", "ymax"])  # in box_format order
    box_format: Literal["xyxy", "xywh"] = "xyxy"  # corners, or top-left corner + width/height (COCO)
    box_units: Literal["pixels", "normalised"] = "pixels"  # normalised: fractions of the image width/height
    classes: list[str] | None = None  # the label set; null = the labels train.csv uses; others are errors
    # sequences: train_csv/test_csv are long tables (id, step, features) with labels in labels_csv, or
    # train_csv holds one text per row (id, text_col, label)
    labels_csv: str | None = None  # one label per series id (id_col, target_col, group_col); null for text
    step_col: str | None = "step"  # orders the rows of a series; null = file order
    feature_cols: list[str] | None = None  # null = every numeric column except id, step and group
    text_col: str | None = None  # token sequences: the text column; set it for text, leave null for series
    # several text columns as one input (a title and a body), joined by the tokenizer's separator token (word
    # vocabularies: a space), in this order; text_col may then be left out (it becomes the first of them)
    text_cols: list[str] | None = None


@dataclass
class CVConfig:
    folds: int = 5  # K; 5 is the Kaggle default, 10 on small data where each OOF row matters
    # auto: stratified_group with a group column, else stratified; kfold when the target is continuous
    strategy: Literal["auto", "stratified", "group", "stratified_group", "kfold"] = "auto"
    # folds belong to the competition, not to one experiment: experiments with the same data and CV settings get
    # the same folds whatever their `seed` (so seed averages and different models blend); 42 was the folds' seed
    # before cv.seed existed, so older experiments keep theirs
    seed: int = 42
    folds_file: str | None = None  # reuse these folds (another experiment's runs/<exp>/folds.csv) instead of making new ones
    adversarial: bool = True  # adversarial validation in prepare: a train-vs-test classifier's AUC (pipeline.data.drift)
    adversarial_warn: float = 0.7  # from this AUC up, a warning that CV may not track the leaderboard
    # > 0: also score the OOF on this share of training rows, the most test-like by adversarial validation
    # (scores.json cv_like_test): each row is still predicted by the fold model that never saw it, so it is an
    # honest estimate of the score on a test set that differs from train. 0.2 is a common choice.
    holdout_like_test: float = 0.0


@dataclass
class ModelConfig:
    # any timm model name (`timm.list_models()`); sequences: inception resnet1d gru lstm transformer, or
    # hf:<folder>, a pretrained Hugging Face text encoder in a local folder (pip install -e '.[text]')
    name: str = "resnet18"
    pretrained: bool = False  # download ImageNet weights from the hub (needs internet; see weights_file)
    weights_file: str | None = None  # local state_dict for the backbone; the head is re-initialised
    drop_rate: float = 0.0  # dropout before the classifier; 0.1-0.3 for big heads on small data
    drop_path_rate: float = 0.0  # stochastic depth; ~0.1 for convnext/vit fine-tuning
    pooling: Literal["mean", "cls"] = "mean"  # hf: encoders: average the states over the attention mask, or the first token's
    dropout_samples: int = 1  # hf: multi-sample dropout: training averages the head over this many dropout draws


@dataclass
class ImageConfig:
    size: int = 224  # train/valid side in pixels; pretrained CNNs like their native size
    mean: list[float] | None = None  # normalisation; null = the model's pretrained config
    std: list[float] | None = None  # as mean
    # data.cache keeps each image's aspect and enough pixels for the smallest random crop (pipeline.data.cache.cached_side);
    # margin: that long side x (1 + margin)
    cache_margin: float = 0.0
    # validation/test: the short side to size / crop_pct, then the centre size x size (timm's eval crop uses 0.875,
    # which shows objects about as large as training's random crops do); 1.0 keeps the whole of a square image
    crop_pct: float = 1.0
    # resampling of training crops and validation/test resizes (OpenCV): linear, cubic (timm's bicubic) or area
    interpolation: Literal["linear", "cubic", "area"] = "linear"
    # the most pixels an image file may declare, checked from its header before any decode (Pillow's limit: a
    # 200 KB PNG can hold a 20000 x 10000 image, 600 MB decoded); raise it for genuine whole-slide images, 0: none
    max_pixels: int = 89_478_485


@dataclass
class AugmentConfig:
    # RandomResizedCrop's smallest area fraction; null: the task's default. Classification 0.35: timm uses 0.08 on
    # ImageNet, and on leaves-dev fold 0 (6 epochs) 0.08 lost 0.038 accuracy to 0.35 (seed noise 0.013;
    # scripts/ablate.py). Segmentation 1.0, no rescaling crop: a mask is scored on object sizes as they are, and on
    # TGS fold 0 (8 epochs) scale_min 0.6 with jitter 0.1 scored iou_map 0.7318 against 0.7758 with 1.0 and none
    scale_min: float | None = None
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip; 0.5 for top-down data (leaves, satellites, cells)
    rotate90: float = 0.0  # probability of a random 90-degree turn
    # brightness/contrast/saturation strength; 0 turns it off. On leaves-dev fold 0, timm's 0.4 lost 0.038 accuracy and
    # 0 gained 0.021 (within twice the seed noise), so 0.2 stays
    color_jitter: float = 0.2
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) for mixup; 0.2-0.4 typical, 0 off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) for cutmix; 1.0 typical, 0 off
    mix_prob: float = 1.0  # share of batches mixed when mixup/cutmix is on
    # crops, flips, turns, colour jitter and normalisation of training batches on the GPU, the loader only reading
    # uint8 squares (pipeline/tasks/classification/gpu_augment.py): for a few CPU cores behind a fast GPU. Image
    # classification; ignored, and said, off CUDA. Validation, TTA and prediction stay on the CPU path
    on_gpu: bool = False

    def smallest_crop(self, task_default: float) -> float:
        """scale_min, or the task's default where the config leaves it null."""
        return task_default if self.scale_min is None else self.scale_min


@dataclass
class TrainConfig:
    epochs: int = 10  # full passes over the fold's training rows
    # per device, per step; auto: the largest that fits in auto_batch_fraction of the GPU's memory (trial steps,
    # pipeline.engine.autobatch), logged, with the LR scaled to it as usual; on CPU auto means 32
    batch_size: int | Literal["auto"] = 32
    auto_batch_fraction: float = 0.7  # share of GPU memory train.batch_size=auto may plan for (evaluation needs room)
    base_lr: float = 1e-3  # peak AdamW LR for base_batch samples per optimizer step
    base_batch: int = 256  # the batch base_lr was tuned for; lr scales with effective/base_batch
    lr_scale: Literal["linear", "sqrt", "none"] = "linear"  # sqrt is gentler for very large batches
    accum_steps: int = 1  # gradient accumulation; effective batch = batch_size x accum_steps x world size
    # under torchrun: BatchNorm statistics over every rank's batch (SyncBatchNorm), for small per-GPU batches such as
    # detection's; costs an all-reduce per BN layer, so off by default. Ignored in a single process
    sync_bn: bool = False
    weight_decay: float = 0.05  # AdamW decoupled decay; never applied to norms and biases
    # backbone LR = mult x head LR. 1.0: on fold 0 of four image dev sets, 0.5 never won and lost 0.12 accuracy on
    # leaves, 0.10 F2 on miml-scenes and 0.58 MAE on utkface-age at 6 epochs (scripts/ablate.py)
    backbone_lr_mult: float = 1.0
    # layer-wise LR decay (hf: encoders): each layer down from the top multiplies the backbone LR by this once
    # more, the embeddings most of all; 0.8-0.95 is the usual range for BERT-like encoders; 1.0 off
    layer_lr_decay: float = 1.0
    grad_checkpointing: bool = False  # hf: encoders recompute activations in backward: less memory, ~30% slower
    warmup_epochs: float = 1.0  # linear warmup length, fractions allowed (per optimizer step)
    # short runs: the warmup and the EMA's averaging window (1 / (1 - decay) steps) never span more than this share
    # of the run's optimizer steps, so a 6-epoch run is not a sixth warmup; 1.0 leaves both uncapped
    short_run_cap: float = 0.1
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of the peak LR
    clip_grad: float = 1.0  # max global grad norm; 0 turns clipping off
    label_smoothing: float = 0.1  # cross-entropy smoothing (binary/multilabel: of the 0/1 truths); 0.1 is the usual default
    # auto: cross-entropy (multiclass), BCE (binary, multilabel), mse (regression, ordinal; l1 when the metric is mae);
    # focal/asl: sigmoid focal or asymmetric loss for multilabel; mse/l1/huber on the standardised value
    loss: Literal["auto", "bce", "focal", "asl", "mse", "l1", "huber"] = "auto"
    # auto: fp32 on CPU; on CUDA bf16 from compute capability 8.0 (A100, L4, H100), fp16 + GradScaler below it (T4,
    # P100, V100 emulate bf16); the choice and why is logged (pipeline.core.precision)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True  # NHWC memory format; faster for CNNs on CPU (~15%) and tensor cores
    compile: bool = False  # torch.compile the training forward/backward; pays off on long GPU runs, the
    # first steps compile for minutes (and need a C++ compiler on CPU); checkpoints stay plain state_dicts
    ema: bool = True  # keep an exponential moving average of weights and evaluate it every epoch
    ema_decay: float = 0.9998  # EMA decay ceiling; warmup makes it small for the first few hundred steps
    patience: int = 5  # stop after this many epochs without a better valid score; 0 never stops
    num_workers: int = -1  # data-loading processes; -1 = min(8, CPUs) with a GPU, 0 on CPU (workers take the model's cores)
    keep_top: int = 3  # best epochs whose weights stay in fold{k}/top/ for averaging (avg.pt); 0 keeps none
    max_steps_per_epoch: int = 0  # cap optimizer steps per epoch for smoke runs; 0 = whole epoch
    deterministic: bool = False  # deterministic CUDA kernels (slower: no cuDNN autotuning); CPU runs repeat anyway
    on_nan: Literal["stop", "rollback"] = "stop"  # NaN/inf loss: stop the fold, or reload the last good epoch
    rollback_lr_factor: float = 0.5  # on_nan=rollback: multiply the LR by this for every rollback
    max_rollbacks: int = 3  # on_nan=rollback: give up (stop) after this many in one fold
    # valid score, also the CV score (pipeline.scoring.metrics): accuracy logloss f1 f1_macro f1_micro f1_weighted f1_samples
    # f2_samples roc_auc pr_auc qwk rmse rmsle mae r2 map@K; detection: map50 (COCO AP at IoU 0.5) or map (0.5:0.95).
    # auto: accuracy (multiclass), roc_auc (binary), f1_samples (multilabel), rmse (regression), qwk (ordinal), map50
    metric: str = "auto"


@dataclass
class PredictConfig:
    # auto: the flips/turns training used (sequences: none) | none | hflip | vflip | flips | d4 | shifts |
    # multiscale | "identity,rot90" | search: each fold's views chosen on the other folds' OOF (pipeline.scoring.tta)
    tta: str = "auto"
    batch_size: int = 64  # inference images per device per step (each TTA view multiplies it)
    # best: raw or EMA, whichever validated better; avg: the top epochs averaged; auto: per fold, avg when it scores
    # at least as well as best on the fold's validation rows (without TTA), else best (predict.json says which)
    weights: Literal["best", "ema", "avg", "auto"] = "best"
    # avg averages only kept epochs whose valid score is within this fraction of the best one's (0.02: 2%): an
    # early, undertrained epoch averaged in pulls the weights back (leaves-dev, 2 epochs: 0.085 avg vs 0.129 best)
    avg_within: float = 0.02
    # each fold predicts at the image size it was trained with (its checkpoint's recipe); a size here is a
    # deliberate test-time resolution for every fold (e.g. 1.15x the training size), logged and kept in predict.json
    image_size: int = 0
    avg_ema: bool = False  # average the EMA weights of the top epochs instead of the raw ones
    bn_batches: int = 20  # training batches to re-estimate BatchNorm statistics of averaged weights; 0 = off
    # stored probabilities: float16 halves oof/test.parquet and ensembling memory (3 significant digits, so
    # labels and blends are unchanged, but log-loss of confident mistakes is not: keep float32 for log-loss)
    dtype: Literal["float32", "float16"] = "float32"
    # a full-data refit (`train --fold full`) joins the test mean as one more model once it is trained; it has no
    # OOF, so the CV is unchanged (the folds'); false leaves it out
    full_refit: bool = True


@dataclass
class DetectConfig:
    fpn_channels: int = 96  # FPN/head width, a multiple of 32; torchvision uses 256, 64-128 suits a few classes
    freeze_bn: bool = True  # freeze a pretrained backbone's BatchNorm: detection batches are too small to re-fit it
    score_thr: float = 0.05  # drop detections below this score (COCO evaluation uses 0.05)
    nms_iou: float = 0.5  # per-class NMS IoU inside one model's output; keep it below wbf_iou
    max_det: int = 100  # detections kept per image (COCO's maxDets)
    wbf_iou: float = 0.55  # IoU at which Weighted Boxes Fusion merges boxes across TTA views, folds, models
    wbf_skip: float = 0.0  # WBF ignores boxes below this score
    # one box in the submission; fields: score x y w h x2 y2 (pixels) label (class name) label_id
    submit_format: str = "{score:.4f} {x:.0f} {y:.0f} {w:.0f} {h:.0f}"
    submit_score_thr: float = 0.0  # boxes below this score are left out of the submission


@dataclass
class SequenceConfig:
    dim: int = 64  # stem width: token embedding size, or the projection of a series' channels
    filters: int = 32  # conv filters per branch (inception: 4 branches) or per layer (resnet1d)
    hidden: int = 64  # GRU/LSTM hidden size per direction
    heads: int = 4  # transformer attention heads; dim must divide by it
    layers: int = 2  # GRU/LSTM/transformer layers; inception stacks 3 modules per layer
    max_len: int = 0  # keep at most this many steps (series: centre crop, text: the start); 0 = all
    # with max_len 0, prepare warns about a series of more steps (a text of more characters) than this: padded whole,
    # one such row makes every batch it joins that long
    warn_len: int = 100_000
    # (hf: encoders: tokens with the special ones, truncated at tokenisation; 0 = the model's limit, at most 512)
    vocab_size: int = 20000  # most frequent training-fold tokens kept, beside <pad> and <unk>
    min_freq: int = 2  # tokens seen fewer times in the training fold become <unk>
    lowercase: bool = True  # lowercase text before splitting into words
    hf_tokenizer: str | None = None  # a Hugging Face tokenizer available locally (name or path) instead of words
    jitter: float = 0.03  # training noise on normalised series, in standard deviations; 0 off
    scaling: float = 0.1  # training per-channel scale ~ N(1, scaling) on series; 0 off
    crop: float = 0.1  # training random crop removes up to this share of the steps; 0 off
    tta_crop: float = 0.1  # predict.tta=crops: views without this share of the start, or of the end
    # networks trained per fold and averaged, InceptionTime-style (the paper averages 5); each costs a network's time
    networks: int = 1
    rocket_kernels: int = 0  # model.name=minirocket|multirocket: random kernels; 0 = the papers' 10,000 / 6,250


@dataclass
class SegmentConfig:
    """task: segmentation: masks in (RLE in train.csv's target_col, or mask images), masks out as RLE."""

    architecture: str = "Unet"  # segmentation_models_pytorch: Unet, UnetPlusPlus, FPN, DeepLabV3Plus, Linknet, ...
    mask_dir: str = ""  # folder of mask images named <id><mask_ext> ("" = RLE strings in train.csv's target_col)
    mask_ext: str = ".png"  # suffix of the mask files after the id
    classes: list[str] | None = None  # mask classes, one output channel each; null = one (binary masks)
    # multi-class mask images: the pixel value of each class, in `classes` order (null: 1, 2, ...); binary masks
    # are any non-zero pixel (16-bit 0/65535 PNGs too)
    mask_values: list[int] | None = None
    class_col: str = ""  # RLE rows with a class column (Severstal's ClassId): one row per image and class
    rle_order: Literal["F", "C"] = "F"  # Kaggle's column-major pixel numbering (F); C: row by row (Carvana)
    loss: str = "bce+dice"  # "+"-joined terms: bce, dice, lovasz (binary hinge), focal
    # a table of per-image numbers (id_col and values: TGS's depths.csv, z) fed to the network as constant input
    # planes, standardised on each fold's training images; "" = none. Measure it against a run without before keeping it
    side_csv: str = ""
    side_cols: list[str] | None = None  # its columns to use; null = every numeric column but the id
    # the decision rules fitted on OOF (each fold's by the other folds): a pixel threshold, and masks emptied
    # below a minimum area or when their peak probability is low; false: 0.5 and nothing emptied
    fit_rules: bool = True


@dataclass
class TrackingConfig:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online only with a key and a reachable server
    # online: seconds finish() waits for uploads before W&B marks the run crashed; what did not go up stays in the
    # run's wandb/ folder for `wandb sync`. 0: wait for ever
    finish_timeout: float = 300.0
    project: str = "kaggle-pipeline"  # W&B project; the experiment name is the group
    group: str = ""  # W&B group instead of the experiment name ("" = name); `pipeline tune` puts its trials in <exp>-tune
    entity: str | None = None  # W&B team or user; null = the key's default
    quiet: bool = False  # no progress bars or progress lines, one line per epoch (CI logs)
    log_every: int = 20  # optimizer steps between progress-bar refreshes (each one syncs the device)
    progress_seconds: float = 30.0  # without a terminal: a progress log line this often (and every 10% of an epoch); 0: off


@dataclass
class ClusterConfig:
    """Where folds, predict shards and tuning workers run (pipeline.runs.executor). `local`: one after another in
    this process; `ray`: each one a Ray task on a cluster whose nodes all see runs_dir and data.root at the same
    paths (docs/cluster.md)."""

    executor: Literal["local", "ray"] = "local"  # --on ray: Ray tasks (pip install 'pipeline[cluster]')
    address: str = ""  # the Ray cluster to join ("" = $RAY_ADDRESS, else a Ray instance started on this machine)
    gpus: float = 1.0  # GPUs each task asks for where the cluster has GPUs: one fold per GPU
    cpus: float = 1.0  # CPUs each task asks for (its torch threads on a CPU-only cluster: 2 folds on 2 cores)
    resources: dict = field(default_factory=dict)  # Ray custom resources each task asks for, e.g. {a100: 1}
    retries: int = 3  # times a task whose worker or node died runs again; it resumes from the fold's last.pt


@dataclass
class TuneConfig:
    """`pipeline tune`: an Optuna study; every trial is an experiment under runs/<exp>/tune/t<number>/."""

    trials: int = 16  # finished trials the study runs to (all workers together; pruned and failed ones count)
    # the searched keys: a list of "key=kind:low:high" (kind log, uniform, int, or choice:a|b|c), or a mapping
    # key -> range, where a choice may gate keys of its own ({choice: {resnet18: {image.size: "int:96:160"}}}).
    # Empty: the default space of the task, centred on the config (train.base_lr and train.weight_decay x/÷ 10,
    # model.drop_rate 0-0.5, train.label_smoothing 0-0.2)
    space: dict | list[str] = field(default_factory=list)
    sampler: Literal["tpe", "random", "cmaes", "gp"] = "tpe"  # TPE: multivariate, seeded, `startup` random trials first
    startup: int = 5  # random trials before the sampler models the results
    pruner: Literal["hyperband", "median", "none"] = "hyperband"  # stops trials early on their epochs' scores
    folds: str = "0"  # the folds each trial trains and is scored on (OOF): "0", "0,1", or "all" for the final comparison
    objective: str = "score"  # or "score,infer": also inference seconds per 1,000 test rows (a Pareto front)
    storage: str = ""  # "": sqlite in runs/<exp>/tune/study.db; an SQLAlchemy URL; journal:/shared/path/study.log
    workers: int = 1  # workers drawing trials at once: Ray tasks, one GPU each (cluster.*), here or on a cluster
    heartbeat: int = 60  # seconds: an RDB-stored trial whose worker stops beating for twice this is failed and retried
    edge: float = 0.1  # warn when the best value sits in the outer 10% of its range: the best may lie beyond it


@dataclass
class DistillConfig:
    """`pipeline distill TEACHER`: fold k of the student learns from fold k's teachers' predictions beside the labels
    (teachers that never saw fold k's validation rows, so the student's OOF stays honest)."""

    teacher: str | None = None  # the teacher's run directory (an experiment, or an ensemble of experiments); distill sets it
    alpha: float = 0.5  # share of the hard label in each training target; the rest is the teachers' prediction
    test: bool = False  # also train on the test rows, on fold k's teachers' predictions alone (no label is involved)


@dataclass
class PseudoConfig:
    """`pipeline pseudo EXP --name NEW`: fold k of NEW trains on fold k's rows plus the test rows that fold k's model
    of EXP labels confidently, and on nothing any model of fold k's validation rows said (its CV stays honest)."""

    source: str | None = None  # the labelling experiment's run directory; pipeline pseudo sets it
    # auto: the lowest confidence at which the kept OOF rows of the other folds reach `precision`; or a number:
    # this confidence (a class probability; ordinal: distance from the nearest cut point, in grades)
    threshold: float | Literal["auto"] = "auto"
    precision: float = 0.95  # share of kept OOF rows (detection: boxes at IoU 0.5) that must be right (auto)
    min_rows: int = 20  # OOF rows (boxes) at least behind that precision: a threshold on 3 lucky rows is noise
    soft: bool = False  # train on the model's probabilities (values) instead of its decisions (not for detection)
    # share of the kept test rows drawn into each epoch, a fresh draw every epoch: the pseudo rows' weight in the
    # loss beside the labelled rows (in expectation), the same for every task and loss
    weight: float = 1.0


@dataclass
class Config:
    name: str = "exp"  # experiment name: runs/<name>/ and the W&B group
    task: Literal["classification", "detection", "sequence", "segmentation"] = "classification"  # what is learned
    seed: int = 42  # initialisation, shuffling, augmentation draws (folds: cv.seed)
    runs_dir: str = "runs"  # where experiments live
    submissions_dir: str = "submissions"  # where submit writes CSVs and log.csv
    data: DataConfig = field(default_factory=DataConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def cache_dir(self) -> Path:
        """Where data.cache keeps decoded images: data.cache_dir, else <runs_dir>/cache."""
        return Path(self.data.cache_dir or Path(self.runs_dir) / "cache")

    def data_path(self, name: str) -> Path:
        """A data.* file as a path: absolute paths stay, relative ones are inside data.root."""
        return Path(self.data.root) / getattr(self.data, name)


NAME = re.compile(r"[A-Za-z0-9._-]+")  # an experiment name: one folder under runs_dir


def check_name(name: Any, what: str = "name") -> str:
    """name, if it can be an experiment's folder under runs_dir (letters, digits, '.', '_', '-'; not '.' or '..')."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(f"{what} {name!r}: an experiment name is one folder under runs_dir: letters, digits, '.', '_' "
                        "and '-' ([A-Za-z0-9._-]+), not '.' or '..'")
    return name


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                sealed: bool = False) -> Config:
    """Defaults, then the YAML file (and the files it extends), then `key.path=value` overrides. A run directory's
    config.yaml (meta.json beside it) is read where the run is now: runs_dir its parent, name its folder's name.
    sealed: a file the pipeline wrote whole (an export's config or recipe), whose `extends` would read elsewhere."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        tree = _read_yaml_tree(path, seen=(), sealed=sealed)
        if path.name == "config.yaml" and (path.parent / "meta.json").is_file():
            _place(tree, path.parent)
    _override(tree, overrides)
    cfg = _build(Config, tree, prefix="")
    check_name(cfg.name)
    return cfg


def load_run_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A run directory's config.yaml pointed at the folder where the run is now: runs_dir its parent, name its
    folder's name, whatever the file says (a run copied from another machine, or moved, reads itself); then
    `key.path=value` overrides."""
    run_dir = Path(run_dir)
    tree = _read_yaml_tree(run_dir / "config.yaml", seen=())
    _place(tree, run_dir)
    _override(tree, overrides)
    return _build(Config, tree, prefix="")


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of cfg with dotted keys set to Python values, checked as a file's values are: the overrides code
    makes (a trial's name, its runs_dir), which never pass through text."""
    tree = to_dict(cfg)
    for key, value in values.items():
        _assign(tree, key.split("."), value)
    out = _build(Config, tree, prefix="")
    check_name(out.name)
    return out


def parse_value(keys: str | list[str], raw: str) -> Any:
    """The value of `--set key.path=raw`: the raw text for a text field (a name, a path: `0123`, `12:30` and
    `exp #2` stay as written; quotes are YAML's), else YAML (numbers, lists, null)."""
    keys = keys.split(".") if isinstance(keys, str) else keys
    kind, text = _field_type(keys), raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # quoted: YAML's string
        return _yaml(text)
    if kind is str:
        return raw
    if set(typing.get_args(kind)) == {str, type(None)}:
        return None if text in ("", "null", "~") else raw
    return _yaml(raw) if text else None


def _override(tree: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key.path=value, e.g. --set train.epochs=5")
        keys = key.strip().split(".")
        try:
            _assign(tree, keys, parse_value(keys, raw))
        except yaml.YAMLError as e:
            raise UserError(f"--set {item!r}: not a YAML value ({str(e).splitlines()[0]})") from None


def _field_type(keys: list[str]) -> Any:
    """The declared type of a dotted config key; None when it names no field (the build reports that)."""
    kind: Any = Config
    for key in keys:
        if not dataclasses.is_dataclass(kind) or key not in {f.name for f in dataclasses.fields(kind)}:
            return None
        kind = typing.get_type_hints(kind)[key]
    return kind


def _place(tree: dict[str, Any], run_dir: Path) -> None:
    """Point a run's config tree at run_dir: set as values, never as text a YAML parser could change."""
    tree["runs_dir"], tree["name"] = str(run_dir.parent), run_dir.name


class _Loader(yaml.SafeLoader):
    """YAML's safe loader whose numbers remember how they were written, so that a text field given `0123` or
    `12:30` (YAML 1.1: 83 and 750) keeps that text (_coerce)."""


class _Int(int):
    text: str


class _Float(float):
    text: str


def _remembered(kind: type, construct):
    def constructor(loader, node):
        value = kind(construct(loader, node))
        value.text = node.value
        return value

    return constructor


_Loader.add_constructor("tag:yaml.org,2002:int", _remembered(_Int, yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor("tag:yaml.org,2002:float", _remembered(_Float, yaml.SafeLoader.construct_yaml_float))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader


def config_from_dict(tree: dict[str, Any], where: str = "") -> Config:
    """A Config from a resolved config tree (a checkpoint's, a run's config.yaml); bad keys name `where`."""
    try:
        return _build(Config, tree, prefix="")
    except UserError as e:
        raise UserError(f"{where}: {e}" if where else str(e)) from None


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _read_yaml_tree(path: Path, seen: tuple[Path, ...], sealed: bool = False) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass --config configs/<name>.yaml")
    if path.resolve() in seen:
        raise UserError(f"config {path}: `extends` loops back to itself")
    try:
        tree = _yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise UserError(f"config {path}: expected a mapping of keys at the top level")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if sealed:
        raise UserError(f"config {path} extends another file; the pipeline writes this file whole, so it was "
                        "edited: export the experiment again")
    base = _read_yaml_tree(path.parent / parent, seen + (path.resolve(),))
    return _merge(base, tree)


def _merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _assign(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            node = tree[key] = {}
        tree = node
    tree[keys[-1]] = value


def _build(cls: type, tree: Any, prefix: str) -> Any:
    if not isinstance(tree, dict):
        raise UserError(f"config key {prefix.rstrip('.') or '<top>'}: expected a section of keys, got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in tree.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise UserError(f"unknown config key {prefix}{key}{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, kind, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check a YAML value against a field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(kind), key)
    if origin is Literal:
        return _coerce_literal(value, typing.get_args(kind), key)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key {key}={value!r}: expected a list, e.g. [0.5, 0.5, 0.5]")
        return [_coerce(v, typing.get_args(kind)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    return _coerce_scalar(value, kind, key)


def _coerce_union(value: Any, args: tuple, key: str) -> Any:
    """X | None, or several members (int | Literal["auto"]): the first member that takes the value."""
    if value is None and type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    if len(inner) == 1:
        return _coerce(value, inner[0], key)
    for member in inner:
        try:
            return _coerce(value, member, key)
        except UserError:
            pass
    names = [" or ".join(map(repr, typing.get_args(m))) if typing.get_origin(m) is Literal else m.__name__
             for m in inner]
    raise UserError(f"config key {key}={value!r}: expected {' or '.join(names)}")


def _coerce_literal(value: Any, args: tuple, key: str) -> Any:
    if value not in args:
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"config key {key}={value!r}: choose one of {', '.join(map(str, args))}{hint}")
    return value


def _coerce_scalar(value: Any, kind: type, key: str) -> Any:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is float and number:
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads `2e-4` (no dot) as a string
        except ValueError:
            pass
    if kind is str and number:
        return getattr(value, "text", str(value))  # YAML reads `name: 0123` as the number 83: the text as written
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"config key {key}={value!r}: expected {kind.__name__}")
    return kind(value) if kind in (int, float) else value  # plain numbers, not _Loader's
