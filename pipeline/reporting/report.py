"""The sections of an experiment's HTML page (`pipeline report EXP`, pipeline.stages.report writes it).

Learning curves per fold, the OOF confusion matrix and per-class scores, the highest-loss OOF images, and
CV against the public LB of every submission. The PNGs are also written to runs/<exp>/report/; the page
embeds them, so it can be mailed or uploaded as one file. --screenshot renders the page to report.png.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.reporting import analysis, plots
from pipeline.reporting.page import Section, table
from pipeline.reporting.target_report import SECTIONS
from pipeline.runs.rundir import RunDir
from pipeline.scoring.metrics import greater_is_better

log = logging.getLogger(__name__)
GRID = 18  # highest-loss OOF samples shown
LISTED = 15  # rows of the per-class and confused-pairs tables


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_oof(run: RunDir) -> pd.DataFrame | None:
    """The predicted OOF (runs/<exp>/oof.parquet), else what training wrote per fold, else None."""
    if run.oof.is_file():
        return pd.read_parquet(run.oof)
    parts = [f.oof for f in run.fold_dirs() if f.oof.is_file()]
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else None


def summary(cfg: Config, scores: dict, input_size: int | None = None) -> Section:
    """The run's facts: task, model, input size (the task's, pipeline.engine.task.Task.input_size), CV ..."""
    meta = _json(RunDir(cfg.run_dir).meta)
    cv = scores.get("cv")
    facts = {
        "task": cfg.task, "model": cfg.model.name, "image size": input_size or "-",
        "folds": cfg.cv.folds, "epochs": cfg.train.epochs, "TTA": scores.get("tta", "-"),
        "weights": scores.get("weights", scores.get("method", "-")),
        f"CV {scores.get('metric', cfg.train.metric)}": "-" if cv is None else f"{cv:.4f} ± {scores.get('cv_std', 0):.4f}",
        "CV without TTA": f"{scores['cv_no_tta']:.4f}" if "cv_no_tta" in scores else "-",
        "per fold": ", ".join(f"{k}: {v:.4f}" for k, v in scores.get("folds", {}).items()) or "-",
        **refit_fact(scores),
        "git": (meta.get("git") or {}).get("sha") or "-",
    }
    return Section("Summary", table(pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]})))


def refit_fact(scores: dict) -> dict:
    """The report's line for a full-data refit in the test predictions (pipeline.stages.predict), if there is one."""
    refit = scores.get("full_refit")
    if not refit:
        return {}
    return {"test predictions": f"the {len(scores.get('folds', {}))} folds + {refit['note']}, {refit['epochs']} "
                                f"epochs, {refit['weights']} weights"}


def test_set_sections(run: RunDir, scores: dict) -> list[Section]:
    """How this experiment used the test set: its pseudo-labels (pipeline pseudo) and the adversarial validation."""
    sections = []
    if run.pseudo.is_file():
        p = _json(run.pseudo)
        cv, metric = scores.get("cv"), p["metric"]
        rows = pd.DataFrame([{"fold": f["fold"], "threshold": "-" if f["threshold"] is None else round(f["threshold"], 4),
                              "OOF precision": "-" if f.get("oof_precision") is None else round(f["oof_precision"], 4),
                              "OOF units kept": f"{f['oof_kept']} / {f['oof_units']}" if "oof_kept" in f else "-",
                              "test rows kept": f"{f['rows']} / {f['of']}",
                              "top classes": ", ".join(f"{c} {n}" for c, n in sorted(
                                  f["per_class"].items(), key=lambda kv: -kv[1])[:5]) or "-"} for f in p["folds"]])
        after = "not predicted yet" if cv is None else f"{cv:.4f}"
        body = (f"<p>Round {p['round']} of pseudo-labels from <b>{html.escape(p['source'])}</b>: fold k trains on the "
                f"test rows that {html.escape(p['source'])}'s fold-k model labels, kept at a threshold fitted on the "
                f"other folds' OOF rows ({'auto, ' if p['threshold'] == 'auto' else ''}precision target "
                f"{p['precision_target']}); {'soft targets' if p['soft'] else 'hard labels'}, weight {p['weight']}. "
                f"CV before ({html.escape(p['source'])}) {metric} {p['source_cv']:.4f} &rarr; after {after}.</p>"
                + table(rows))
        sections.append(Section("Pseudo-labels", body))
    if run.adversarial_json.is_file():
        a = _json(run.adversarial_json)
        top = pd.DataFrame([{"feature": k, "AUC alone": round(v, 3)} for k, v in list(a["features"].items())[:8]])
        verdict = "the test set looks like train" if a["auc"] < a["warn_above"] else \
            "the test set differs from train: CV may not track the leaderboard"
        like = scores.get("cv_like_test")
        extra = "" if like is None else (f"<p>CV on the {like['share']:.0%} most test-like training rows "
                                         f"({like['rows']} OOF rows): {like['score']:.4f}.</p>")
        sections.append(Section("Adversarial validation", f"<p>Train-vs-test AUC {a['auc']:.3f} ({a['rows'][0]} train vs "
                                f"{a['rows'][1]} test rows): {verdict}. Features that separate most:</p>" + table(top)
                                + extra))
    return sections


def learning_section(cfg: Config, out: Path) -> Section:
    metrics = analysis.fold_metrics_by_fold(cfg.run_dir)
    if not metrics:
        return Section("Learning curves", "<p>No fold has trained yet.</p>")
    figure = plots.learning_curves(metrics, cfg.train.metric, out / "learning_curves.png")
    best = pd.DataFrame([{"fold": k, "epochs": len(m), "best valid score": m["valid/score"].max()
                          if "valid_ema/score" not in m else max(m["valid/score"].max(), m["valid_ema/score"].max()),
                          "last train loss": m["train/loss"].iloc[-1]} for k, m in sorted(metrics.items())])
    return Section("Learning curves", table(best.round(4)), [figure])


def tuning_section(cfg: Config, out: Path) -> Section | None:
    """When the experiment is a study (`pipeline tune` wrote runs/<exp>/tune/trials.csv): its history,
    importances, parallel coordinates and the best trials."""
    root = cfg.run_dir / "tune"
    if not (root / "trials.csv").is_file():
        return None
    trials = pd.read_csv(root / "trials.csv")
    fixed = {"trial", "state", "score", "infer_s_per_1000", "epochs", "minutes", "folder", "worker", "error"}
    params = [c for c in trials.columns if c not in fixed]
    greater = greater_is_better(cfg.train.metric)
    figure = plots.tuning(trials, params, _json(root / "importances.json"), cfg.train.metric, greater,
                          out / "tuning.png")
    states = trials["state"].value_counts().to_dict()
    done = trials[trials["state"] == "complete"].sort_values("score", ascending=not greater)
    best = yaml.safe_load((root / "best.yaml").read_text()) if (root / "best.yaml").is_file() else {}
    body = (f"<p>{len(trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}); best: trial "
            f"{best.get('trial', '-')}, {cfg.train.metric} {best.get('score', float('nan')):.4f}.</p>"
            + table(done.drop(columns=["folder", "worker", "error"]).head(LISTED).round(6)))
    return Section("Tuning", body, [figure])


def oof_sections(oof: pd.DataFrame, truth: np.ndarray, probs: np.ndarray, target, out: Path) -> list[Section]:
    """The OOF section of the target type (pipeline.scoring.targets): for classes the confusion matrix, per-class scores and
    the most confused pairs; see pipeline.reporting.target_report for the others."""
    if not isinstance(target, list) and target.kind != "multiclass":

        return SECTIONS[target.kind](oof, truth, probs, target, out)
    classes = target if isinstance(target, list) else target.columns
    pred = probs.argmax(axis=1)
    matrix = analysis.confusion_frame(truth, pred, classes).to_numpy()
    per_class = (analysis.per_class_report(truth, pred, classes).iloc[:len(classes)]  # without the average rows
                 .rename_axis("class").reset_index()
                 .sort_values(["f1-score", "support"], ascending=[True, False], kind="stable"))
    never = int(((per_class["f1-score"] == 0) & (per_class["support"] > 0)).sum())
    body = (f"<p>{len(oof)} OOF rows, accuracy {(pred == truth).mean():.4f}; {never} of {len(classes)} classes never "
            "predicted right. Worst classes by F1:</p>"
            + table(per_class.head(LISTED).round(4)) + "<p>Most confused pairs (true → predicted):</p>"
            + table(analysis.confused_pairs(truth, pred, classes, top=LISTED).round(4)))
    return [Section("Out-of-fold predictions", body, [plots.confusion(matrix, classes, out / "confusion.png")])]


def thumbnail(image: np.ndarray, side: int = 160) -> np.ndarray:
    scale = side / max(image.shape[:2])
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)


def shorten(text: str, n: int = 22) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def leaderboard_section(cfg: Config, scores: dict, out: Path) -> Section:
    """Every logged submission; with public LB scores, CV against LB (a gap that grows means CV overfits)."""
    path = Path(cfg.submissions_dir) / "log.csv"
    if not path.is_file():
        return Section("CV vs public LB", f"<p>No submissions yet ({html.escape(str(path))}).</p>")
    log_table = pd.read_csv(path)
    scored = log_table.dropna(subset=["public_lb", "cv"])
    scored = scored[scored["metric"] == scores.get("metric", cfg.train.metric)]  # one metric per axis
    figures = [plots.cv_vs_lb(scored, cfg.name, scores.get("metric", cfg.train.metric), out / "cv_vs_lb.png")] \
        if len(scored) else []
    shown = log_table[["created", "exp", "cv", "public_lb", "message", "file"]].tail(LISTED)
    note = "" if figures else "<p>No public LB recorded yet: <code>pipeline submit EXP --lb SCORE</code>.</p>"
    return Section("CV vs public LB", note + table(shown.round(5)), figures)


def _src(path: Path, embed: bool) -> str:
    if embed:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return f"report/{path.name}"


CSS = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#222}
h1{font-size:24px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
table.t{border-collapse:collapse;font-size:13px;margin:6px 0}table.t td,table.t th{border:1px solid #ddd;
padding:3px 8px;text-align:left}table.t th{background:#f3f3f3}img{max-width:100%;display:block;margin:8px 0}"""


def render(name: str, sections: list[Section], embed: bool) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>",
             f"<style>{CSS}</style></head><body><h1>Experiment {html.escape(name)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<img src='{_src(f, embed)}' alt='{html.escape(f.stem)}'>" for f in s.figures]
        parts.append(s.body)
    return "\n".join(parts) + "\n</body></html>\n"


def write_screenshot(page: str, base: Path, png: Path, width: int = 1240, height: int = 20000) -> None:
    """Render the page headless with MuPDF (a wheel: no browser needed) on one tall page, cropped to its content."""
    try:
        import pymupdf
    except ImportError:
        raise UserError("--screenshot needs PyMuPDF: pip install pymupdf (it is in the dev extras)") from None
    story, buffer = pymupdf.Story(html=page, archive=str(base)), io.BytesIO()
    writer, rect = pymupdf.DocumentWriter(buffer), pymupdf.Rect(0, 0, width, height)
    device = writer.begin_page(rect)
    _, filled = story.place(rect + (24, 24, -24, -24))
    story.draw(device)
    writer.end_page()
    writer.close()
    pdf = pymupdf.open("pdf", buffer.getvalue())
    pdf[0].get_pixmap(clip=pymupdf.Rect(0, 0, width, min(height, pymupdf.Rect(filled).y1 + 24)), dpi=96).save(str(png))
