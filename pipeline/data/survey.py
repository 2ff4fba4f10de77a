"""What a competition folder holds, read from its own files: `pipeline init`'s evidence.

    survey(Path("data/classify-leaves")) -> Survey(task="classification", found={"data.id_col": Found(...)}, ...)

Everything comes from train.csv, test.csv, sample_submission.csv and the files beside them: the submission's id
is sample_submission's first column; its other columns say what is predicted (a PredictionString: boxes; an
RLE column: masks; one column per class: probabilities); ids that repeat in test.csv make a long table of series;
ids that name image files give the image folder and extension; a column of sentences makes a text task. Each
finding keeps its evidence, and every guess between candidates is said as a doubt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import UserError

IMAGE_EXTS = ["", ".jpg", ".png", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"]
BOX_SETS = {("xmin", "ymin", "xmax", "ymax"): "xyxy", ("x_min", "y_min", "x_max", "y_max"): "xyxy",
            ("x1", "y1", "x2", "y2"): "xyxy", ("x", "y", "w", "h"): "xywh", ("x", "y", "width", "height"): "xywh",
            ("bbox_x", "bbox_y", "bbox_w", "bbox_h"): "xywh"}
MASK_COLUMNS = {"rle_mask", "encodedpixels", "encoded_pixels", "rle", "mask"}
STEP_NAMES = ("step", "time", "timestep", "t", "timestamp", "seq", "index")
PROBE = 24  # ids tried against the files on disk
TEXT_CHARS, TEXT_WORDS = 25, 4
GROUP_WORDS = ("group", "patient", "user", "subject", "session", "source", "site", "plant", "author", "study")
IMAGE_MODEL = "tf_efficientnet_lite0"  # 4.7M parameters: a strong first baseline on a CPU or a small GPU  # a column whose values average this long reads as text, not as labels


@dataclass
class Found:
    value: Any
    why: str


@dataclass
class Survey:
    root: Path
    task: str = ""
    found: dict[str, Found] = field(default_factory=dict)  # dotted config key -> value and evidence
    doubts: list[str] = field(default_factory=list)
    images: str = ""  # where the images are ("images/*.jpg"): an image model, which wants pretrained weights

    def set(self, key: str, value: Any, why: str) -> None:
        self.found[key] = Found(value, why)

    def value(self, key: str, default: Any = None) -> Any:
        return self.found[key].value if key in self.found else default


def survey(root: str | Path) -> Survey:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass the competition's data folder (pipeline download fills one)")
    s = Survey(root)
    train_path, test_path, sample_path = (table_path(root, name) for name in ("train", "test", "sample_submission"))
    train, test, sample = (read(p) for p in (train_path, test_path, sample_path))
    for key, path, default in (("data.train_csv", train_path, "train.csv"), ("data.test_csv", test_path, "test.csv"),
                               ("data.sample_submission", sample_path, "sample_submission.csv")):
        if path.name != default:
            s.set(key, path.name, f"the only {default.split('.')[0]} table in {root}")
    id_col = find_id(s, sample, test, sample_path)
    # ids as written ("0209", not 209): as the pipeline reads them, and as files are named
    train, test = (read(p, {id_col: str}) for p in (train_path, test_path))
    outputs = [c for c in sample.columns if c != id_col]
    if not outputs:
        raise UserError(f"{sample_path} has only the id column {id_col!r}: init reads what to predict from its other "
                        "columns")
    if {c.lower() for c in outputs} & MASK_COLUMNS:
        masks(s, train, test, id_col, outputs[0], train_path)
    elif test[id_col].duplicated().any():
        series(s, train, test, id_col, outputs, train_path)
    elif outputs == ["PredictionString"] or "predictionstring" in {c.lower() for c in outputs}:
        boxes(s, train, id_col, train_path)
    else:
        targets(s, train, id_col, outputs, train_path, sample_path)
        if images(s, train, test, id_col):
            s.task = "classification"
            s.set("task", s.task, f"the ids of train.csv are image files ({s.images})")
        else:
            text(s, train, id_col)
        groups(s, train, id_col)
    return s


def groups(s: Survey, train: pd.DataFrame, id_col: str) -> None:
    """Columns whose values several training rows share under a name that says so (patient, user, source, ...):
    said as a doubt, not set, since data.group_col changes the folds (rows sharing a value stay in one fold)."""
    used = {id_col, s.value("data.target_col"), s.value("data.text_col"), *(s.value("data.label_cols") or [])}
    found = [f"{c} ({train[c].nunique()} values)" for c in train.columns
             if c not in used and any(w in str(c).lower() for w in GROUP_WORDS)
             and 1 < train[c].nunique() <= len(train) // 2]
    if found:
        s.doubts.append(f"group candidates: {', '.join(found)}: set data.group_col if rows sharing one must stay in "
                        "one fold (the same patient, user, source in train and test)")


def is_text(column: pd.Series) -> bool:
    """Strings (object or pandas' str dtype), not numbers."""
    return pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)


def table_path(root: Path, name: str) -> Path:
    """root/<name>.csv, else the one CSV whose name starts with it (train_v2.csv, sample_submission_stage1.csv)."""
    exact = root / f"{name}.csv"
    if exact.is_file():
        return exact
    found = sorted(p for p in root.glob(f"{name}*.csv") if "label" not in p.name.lower())
    if len(found) == 1:
        return found[0]
    what = {"train": "the training rows", "test": "the rows to predict",
            "sample_submission": "the submission's ids and columns"}[name]
    if not found:
        raise UserError(f"{root} has no {name}.csv: init reads {what} from it; copy the competition's {name}.csv "
                        "there (pipeline download COMPETITION fetches them all)")
    raise UserError(f"{root} has several {name}*.csv ({', '.join(p.name for p in found)}); keep one, or write "
                    f"the config by hand with data.{'sample_submission' if name == 'sample_submission' else name + '_csv'}")


def read(path: Path, dtype: dict | None = None) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, low_memory=False, dtype=dtype)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path} cannot be read as CSV ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if table.empty:
        raise UserError(f"{path} has no rows")
    return table


def find_id(s: Survey, sample: pd.DataFrame, test: pd.DataFrame, sample_path: Path) -> str:
    """sample_submission's first column (Kaggle's convention), which test.csv must share."""
    id_col = sample.columns[0]
    if id_col not in test.columns:
        shared = [c for c in sample.columns if c in test.columns]
        if len(shared) != 1:
            raise UserError(f"{sample_path}'s first column {id_col!r} is not in test.csv (test has "
                            f"{', '.join(map(str, test.columns[:8]))}); init cannot tell the id column")
        id_col = shared[0]
    s.set("data.id_col", id_col, f"{sample_path.name}'s id column, also in test.csv")
    others = [c for c in test.columns if c != id_col and test[c].is_unique and is_text(test[c])
              and any(w in str(c).lower() for w in ("id", "image", "name", "file", "path"))]
    if others:
        s.doubts.append(f"id candidates: {id_col}, {', '.join(others)} (took {id_col}: the submission's)")
    return id_col


def targets(s: Survey, train: pd.DataFrame, id_col: str, outputs: list[str], train_path: Path, sample_path: Path):
    """The target column (one output), 0/1 or value columns (several), or a label column whose classes are the
    sample's columns (one probability column per class)."""
    if id_col not in train.columns:
        raise UserError(f"{train_path} has no {id_col!r} column (sample_submission's id); init cannot join them")
    if len(outputs) == 1 and outputs[0] in train.columns:
        s.set("data.target_col", outputs[0], f"{sample_path.name}'s column to predict, also in {train_path.name}")
        return
    if len(outputs) > 1 and all(c in train.columns for c in outputs):
        s.set("data.label_cols", outputs, f"{sample_path.name}'s {len(outputs)} columns, each in {train_path.name}")
        return
    for column in (c for c in train.columns if c != id_col and is_text(train[c])):
        if set(outputs) >= set(train[column].astype(str).unique()) and len(outputs) > 1:
            s.set("data.target_col", column, f"its labels are {sample_path.name}'s {len(outputs)} columns "
                                             "(one probability column per class)")
            return
    raise UserError(f"{sample_path} asks for {', '.join(outputs)}, which {train_path} does not hold (its columns: "
                    f"{', '.join(map(str, train.columns[:10]))}); init cannot tell the target")


def images(s: Survey, train: pd.DataFrame, test: pd.DataFrame, id_col: str) -> bool:
    """The folder and extension that turn ids into image files; False when the ids are not files."""
    found = image_place(s.root, train[id_col].astype(str).head(PROBE).tolist())
    if found is None:
        return False
    folder, ext = found
    s.images = f"{folder or '.'}/*{ext or ''}"
    s.set("model.name", IMAGE_MODEL, "a small ImageNet CNN: a strong first baseline, quick on CPU")
    if folder:
        s.set("data.image_dir", folder, f"where the first {PROBE} training ids are found")
    if ext:
        s.set("data.image_ext", ext, f"the ids carry no extension; the files are {ext}")
    if image_place(s.root, test[id_col].astype(str).head(PROBE).tolist()) != found:
        s.doubts.append(f"the test ids are not all under {folder or 'the root'} with {ext or 'no'} extension: "
                        "prepare will name the missing files")
    s.set("image.size", image_size(s.root / folder, train[id_col].astype(str).head(PROBE), ext),
          "the median side of the first training images, to a multiple of 32 within 64-256 (a first baseline: "
          "larger sides often score higher, at their cost)")
    return True


def image_place(root: Path, ids: list[str]) -> tuple[str, str] | None:
    folders = [""] + sorted(p.relative_to(root).as_posix() for p in root.glob("*") if p.is_dir()) + \
        sorted(p.relative_to(root).as_posix() for p in root.glob("*/*") if p.is_dir())
    for folder in folders:
        for ext in IMAGE_EXTS:
            named = ext or Path(ids[0]).suffix.lower() in IMAGE_EXTS[1:]  # an id with no suffix is no image
            if ids and named and all((root / folder / f"{i}{ext}").is_file() for i in ids):
                return folder, ext
    return None


def image_size(folder: Path, ids: pd.Series, ext: str) -> int:
    import cv2

    sides = []
    for i in ids:
        image = cv2.imread(str(folder / f"{i}{ext}"), cv2.IMREAD_UNCHANGED)
        if image is not None:
            sides.append(np.sqrt(image.shape[0] * image.shape[1]))
    side = float(np.median(sides)) if sides else 224.0
    return int(min(256, max(64, round(side / 32) * 32)))


def text(s: Survey, train: pd.DataFrame, id_col: str) -> None:
    """A column of sentences (long, many words) makes a text task; else the folder is not understood."""
    target = s.value("data.target_col")
    candidates = [c for c in train.columns if c not in (id_col, target) and is_text(train[c])
                  and train[c].astype(str).str.len().mean() >= TEXT_CHARS
                  and train[c].astype(str).str.split().str.len().mean() >= TEXT_WORDS]
    if not candidates:
        raise UserError(f"{s.root}: the ids of train.csv are not image files (tried the folders here with "
                        f"{', '.join(e or 'no extension' for e in IMAGE_EXTS)}), test.csv is not a long table of "
                        "series, and no column holds text; init cannot tell the task")
    s.task = "sequence"
    s.set("task", "sequence", f"{candidates[0]!r} holds text (on average "
                              f"{train[candidates[0]].astype(str).str.split().str.len().mean():.0f} words)")
    s.set("data.text_col", candidates[0], "the longest free-text column" if len(candidates) == 1 else
          f"the first of the text columns {candidates}")
    if len(candidates) > 1:
        s.doubts.append(f"several text columns: {', '.join(candidates)} (took {candidates[0]}; data.text_cols "
                        "joins several)")
    s.set("model.name", "gru", "a bidirectional GRU over a vocabulary of the training text: a fast first baseline "
                                "(hf:<folder> for a pretrained encoder)")


def series(s: Survey, train: pd.DataFrame, test: pd.DataFrame, id_col: str, outputs: list[str],
           train_path: Path) -> None:
    """A long table: one row per (series, step); the labels in train.csv, or in a labels table beside it."""
    s.task = "sequence"
    s.set("task", "sequence", f"the ids of test.csv repeat ({test[id_col].nunique()} series in {len(test)} rows)")
    step = step_column(test, id_col)
    if step:
        s.set("data.step_col", step, "increases within every series of test.csv")
    else:
        s.doubts.append("no step column found: rows are taken in file order within each series")
    target = outputs[0]
    if len(outputs) > 1:
        s.doubts.append(f"sample_submission has several columns ({', '.join(outputs)}); took {target}")
    if target not in train.columns:
        labels = [p for p in sorted(train_path.parent.glob("*.csv")) if "label" in p.name.lower()]
        holding = [p for p in labels if {id_col, target} <= set(read(p).columns)]
        if not holding:
            raise UserError(f"{train_path} has no {target!r} column and no *labels*.csv beside it holds "
                            f"{id_col!r} and {target!r}; init cannot find the series' labels")
        s.set("data.labels_csv", holding[0].name, f"holds {id_col} and {target}: one label per series")
    s.set("data.target_col", target, "sample_submission's column to predict")
    s.set("model.name", "minirocket", "random-kernel features and a linear head, one closed-form fit per fold: the "
                                      "best single model on the series dev sets, in seconds (then inception)")


def step_column(test: pd.DataFrame, id_col: str) -> str | None:
    numeric = [c for c in test.columns if c != id_col and pd.api.types.is_numeric_dtype(test[c])]
    ordered = [c for c in numeric if test.groupby(id_col, sort=False)[c].apply(
        lambda v: v.is_monotonic_increasing and v.is_unique).all()]
    named = [c for c in ordered if str(c).lower() in STEP_NAMES]
    return (named or ordered or [None])[0]


def masks(s: Survey, train: pd.DataFrame, test: pd.DataFrame, id_col: str, rle_col: str, train_path: Path) -> None:
    """Segmentation: the submission's RLE column, in train.csv or as a folder of mask images named by id."""
    s.task = "segmentation"
    s.set("task", "segmentation", f"sample_submission asks for run-length masks ({rle_col})")
    if id_col not in train.columns:
        raise UserError(f"{train_path} has no {id_col!r} column, the id of sample_submission and test.csv; init "
                        "needs the training images under the same id")
    ids = train[id_col].astype(str).drop_duplicates()
    if rle_col in train.columns:
        s.set("data.target_col", rle_col, f"{train_path.name} holds the masks as RLE in {rle_col}")
    if not images(s, train.drop_duplicates(id_col), test, id_col):
        raise UserError(f"{s.root}: the ids of {train_path.name} are not image files here; init cannot find the images")
    found = image_place(s.root, ids.head(PROBE).tolist())
    if rle_col not in train.columns:
        folders = [f for f in (p.relative_to(s.root).as_posix() for p in [*s.root.glob("*"), *s.root.glob("*/*")]
                               if p.is_dir() and "mask" in p.name.lower())]
        where = next((f for f in folders if image_place(s.root / f, ids.head(PROBE).tolist())), None)
        if where is None:
            raise UserError(f"{train_path} has no {rle_col} column and no folder of mask images named by id; "
                            "init cannot find the masks")
        s.set("segment.mask_dir", where, "a folder of mask images named like the training ids")
        s.set("segment.mask_ext", image_place(s.root / where, ids.head(PROBE).tolist())[1] or ".png",
              "the mask files' extension")
    test_place = image_place(s.root, test[id_col].astype(str).head(PROBE).tolist())
    if test_place is not None and found is not None and test_place[0] != found[0]:
        s.set("data.test_image_dir", test_place[0], "where the first test ids' images are")
        s.doubts[:] = [d for d in s.doubts if not d.startswith("the test ids are not all under")]
    s.set("train.metric", "dice", "mean Dice per image; iou_map is TGS Salt's (check the competition's Evaluation "
                                  "page)")
    s.doubts.append("the metric: dice (Severstal, SIIM, UW-Madison) or iou_map (TGS Salt): set train.metric to the "
                    "competition's")


def boxes(s: Survey, train: pd.DataFrame, id_col: str, train_path: Path) -> None:
    """Detection: one row per box in train.csv (four box columns and a class column), images by id."""
    s.task = "detection"
    s.set("task", "detection", "sample_submission asks for a PredictionString (scored boxes)")
    lower = {str(c).lower(): c for c in train.columns}
    for names, form in BOX_SETS.items():
        if all(n in lower for n in names):
            s.set("data.box_cols", [lower[n] for n in names], f"the box columns of {train_path.name}")
            s.set("data.box_format", form, f"named {', '.join(names)}")
            break
    else:
        raise UserError(f"{train_path} has no four box columns (xmin,ymin,xmax,ymax or x,y,w,h); init cannot "
                        "read the boxes (a bbox string column needs splitting into four first)")
    used = {id_col, *s.value("data.box_cols"), *(c for c in train.columns if str(c).lower() in ("width", "height"))}
    classes = [c for c in train.columns if c not in used and is_text(train[c])]
    if not classes:
        raise UserError(f"{train_path} has no class column beside the boxes; add one (a single class is fine)")
    s.set("data.target_col", classes[0], f"the text column of {train_path.name} beside the boxes "
                                         f"({train[classes[0]].nunique()} class(es))")
    s.set("train.metric", "map50", "COCO AP at IoU 0.5; map for 0.5:0.95 (check the competition's Evaluation page)")
    if not images(s, train.drop_duplicates(id_col), train.drop_duplicates(id_col), id_col):
        raise UserError(f"{s.root}: the ids of {train_path.name} are not image files here; init cannot find the images")
