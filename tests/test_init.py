"""`pipeline init`: a config inferred from a competition folder's own files, then prepare's checks on it."""

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.core.config import load_config
from pipeline.tasks.detection.demo_data import write_digit_boxes_competition
from pipeline.tasks.segmentation.demo_data import write_digit_masks_competition
from tests.conftest import assert_refused, cli, invoke, write_series_competition

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LITE0 = SHARED.parent / "weights" / "efficientnet_lite0_imagenet_timm.pth"


@pytest.fixture
def here(tmp_path, monkeypatch):
    """Run in tmp_path: init writes configs/ and runs/ where it is called."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def init(folder, *args, exit_code=0):
    result = cli("init", folder, *args, exit_code=exit_code)
    path = Path(result.stdout.strip().splitlines()[-1])
    return path, yaml.safe_load(path.read_text()), path.read_text()


def test_an_image_folder_becomes_a_classification_config_with_its_evidence(here, competition):
    path, tree, text = init(competition, "--name", "digits")
    assert path == Path("configs/digits.yaml")
    assert tree["task"] == "classification" and tree["name"] == "digits"
    assert tree["data"]["id_col"] == "image" and tree["data"]["target_col"] == "label"
    assert tree["data"]["target_type"] == "multiclass" and tree["train"]["metric"] == "accuracy"
    assert tree["model"] == {"name": "tf_efficientnet_lite0", "pretrained": True}
    assert "# sample_submission.csv's id column, also in test.csv" in text and "holds 10 labels" in text
    assert (here / "runs/digits/folds.csv").is_file()  # prepare ran on it
    cfg = load_config(path)  # a config the pipeline reads as it is
    assert cfg.image.size == 64 and cfg.data.root == str(competition)
    assert_refused(invoke("init", competition, "--name", "digits"), "exists", "--force")


def test_ids_without_extension_in_a_subfolder_and_a_doubt_about_ids(here, competition):
    train, test, sample = (pd.read_csv(competition / f) for f in ("train.csv", "test.csv", "sample_submission.csv"))
    (competition / "pictures").mkdir()
    for table in (train, test):
        for image in table["image"]:
            source = competition / image
            if source.exists():
                shutil.move(source, competition / "pictures" / Path(image).stem)
                (competition / "pictures" / Path(image).stem).rename(competition / "pictures" / (Path(image).stem + ".png"))
    for table, name in ((train, "train.csv"), (test, "test.csv"), (sample, "sample_submission.csv")):
        table["image"] = table["image"].map(lambda p: Path(p).stem)
        table.to_csv(competition / name, index=False)
    test.assign(image_id=[f"x{i}" for i in range(len(test))]).to_csv(competition / "test.csv", index=False)
    _, tree, text = init(competition, "--name", "bare")
    assert tree["data"]["image_dir"] == "pictures" and tree["data"]["image_ext"] == ".png"
    assert "# DOUBT: id candidates: image, image_id (took image" in text


def test_a_long_table_of_series_with_a_labels_file(here, tmp_path):
    root = write_series_competition(tmp_path / "series")
    _, tree, text = init(root)
    assert tree["task"] == "sequence" and tree["name"] == "series"
    assert tree["data"]["labels_csv"] == "train_labels.csv" and tree["data"]["step_col"] == "step"
    assert tree["data"]["id_col"] == "series_id" and tree["model"]["name"] == "minirocket"
    assert "the ids of test.csv repeat" in text


def test_a_text_column_makes_a_text_task(here, tmp_path):
    root = tmp_path / "reviews"
    root.mkdir()
    words = ["good food and friendly staff here", "the service was slow and rude today", "great value for the money",
             "would not come back again ever"]
    train = pd.DataFrame({"id": range(60), "review": [words[i % 4] + f" number {i}" for i in range(60)],
                          "sentiment": ["pos" if i % 4 in (0, 2) else "neg" for i in range(60)],
                          "user_name": [f"u{i % 7}" for i in range(60)]})
    train.to_csv(root / "train.csv", index=False)
    train.drop(columns="sentiment").assign(id=range(60, 120)).to_csv(root / "test.csv", index=False)
    pd.DataFrame({"id": range(60, 120), "sentiment": "pos"}).to_csv(root / "sample_submission.csv", index=False)
    _, tree, text = init(root)
    assert tree["task"] == "sequence" and tree["data"]["text_col"] == "review" and tree["model"]["name"] == "gru"
    assert "# DOUBT: group candidates: user_name (7 values)" in text and "group_col" not in tree["data"]
    assert tree["data"]["target_type"] == "multiclass"


def test_boxes_make_a_detection_config(here, tmp_path):
    root = write_digit_boxes_competition(tmp_path / "boxes", n_images=40)
    _, tree, _ = init(root)
    assert tree["task"] == "detection" and tree["train"]["metric"] == "map50"
    assert tree["data"]["box_format"] in ("xyxy", "xywh") and len(tree["data"]["box_cols"]) == 4


def test_rle_masks_make_a_segmentation_config_prepare_accepts(here, tmp_path):
    root = write_digit_masks_competition(tmp_path / "masks", n_train=40, n_test=10)
    _, tree, text = init(root)
    assert tree["task"] == "segmentation" and tree["data"]["target_col"] == "rle_mask"
    assert tree["data"]["image_dir"] == "images" and tree["train"]["metric"] == "dice" and "iou_map" in text
    assert os.path.isfile(here / "runs" / tree["name"] / "folds.csv")


def test_folders_init_cannot_read_get_one_line_and_no_config(here, competition):
    (competition / "sample_submission.csv").rename(competition / "answers.csv")
    assert_refused(invoke("init", competition), "no sample_submission.csv", "the submission's ids and columns")
    pd.DataFrame({"id": ["a"], "rle_mask": ["1 1"]}).to_csv(competition / "sample_submission.csv", index=False)
    pd.read_csv(competition / "test.csv").rename(columns={"image": "id"}).to_csv(competition / "test.csv", index=False)
    assert_refused(invoke("init", competition), "has no 'id' column", "the id of sample_submission")
    pd.read_csv(competition / "test.csv").rename(columns={"id": "image"}).to_csv(competition / "test.csv", index=False)
    pd.DataFrame({"image": ["a"], "price": [1.0]}).to_csv(competition / "sample_submission.csv", index=False)
    assert_refused(invoke("init", competition), "asks for price", "cannot tell the target")
    assert_refused(invoke("init", here / "nowhere"), "is not a folder")
    assert not list((here / "configs").glob("*")) if (here / "configs").exists() else True


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("folder", sorted(p.name for p in SHARED.iterdir() if (p / "train.csv").is_file())
                         if SHARED.is_dir() else [])
def test_every_shared_folder_gets_a_config_prepare_accepts(folder, here):
    args = ["--weights-file", str(LITE0)] if LITE0.is_file() else []
    path, tree, _ = init(SHARED / folder, *args)
    assert load_config(path).task == tree["task"] and os.path.isfile(here / "runs" / tree["name"] / "folds.csv")


def test_weights_save_writes_one_file_that_weights_file_reads(tmp_path):
    """`pipeline weights save MODEL --out F`: timm's pretrained weights (here read --from a file, as offline) into
    one safetensors file; a config's model.weights_file then fills the backbone with exactly those tensors."""
    import timm
    import torch
    from safetensors.torch import load_file

    from pipeline.core.config import ModelConfig
    from pipeline.engine.models import build_classifier

    source = tmp_path / "published.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), source)
    out = tmp_path / "weights" / "test_resnet.safetensors"
    assert "set model.weights_file" in cli("weights", "save", "test_resnet", "--out", out, "--from", source).stdout
    saved, published = load_file(out), torch.load(source, weights_only=True)
    assert saved.keys() == published.keys() and all(torch.equal(saved[k], published[k]) for k in saved)
    model = build_classifier(ModelConfig(name="test_resnet", weights_file=str(out)), 3)
    stem = next(k for k in model.state_dict() if k.endswith("weight"))
    assert torch.equal(model.state_dict()[stem], published[stem])
    assert_refused(invoke("weights", "save", "test_resnet", "--out", out, "--from", tmp_path / "none.pth"), "not found")
    assert_refused(invoke("weights", "save", "no_such_net", "--out", out), "not a timm model")
