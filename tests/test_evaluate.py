"""sinder evaluate: metric functions on hand-computed cases, each task on a tiny generated data set
with a known answer (and a shuffled-label control), and the CLI contract."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_sinder
from helpers.datasets import COLOURS, make_knn, save
from helpers.models import tiny_vit
from PIL import Image

from sinder.backbones.timm_vit import TimmViTBackbone
from sinder.errors import ConfigError, OutputExistsError, SinderError
from sinder.evaluate import EvaluateConfig, evaluate, evaluate_models, evaluate_with_info, format_table, write_metrics
from sinder.evaluate.datasets import load_mask, read_voc_boxes, voc_colormap
from sinder.evaluate.intrinsic import IntrinsicStats, neighbour_consistency
from sinder.evaluate.knn import knn_top1, knn_votes
from sinder.evaluate.lost import lost_box
from sinder.evaluate.metrics import box_iou, confusion_matrix, corloc, hungarian_mapping, miou, pixel_accuracy
from sinder.evaluate.unsup_seg import kmeans
from sinder.images import crop_geometry, preprocess
from sinder.measure import Tokens

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see the fixture

KNN_KS = (5, 10, 20)  # each at most the train images of the generated sets (k > train images is refused)
KNN_KEYS = {f"{p}top1@{k}" for p in ("", "patch_") for k in KNN_KS}


def block_image(labels: np.ndarray, colours, block: int = 14) -> np.ndarray:
    return np.kron(np.asarray(colours, dtype=np.uint8)[labels], np.ones((block, block, 1), dtype=np.uint8))


def make_seg(
    root: Path, n_colours: int = 3, shuffle: bool = False, n_train: int = 12, n_val: int = 6, block: int = 28, seed: int = 0
) -> Path:
    """4x4 blocks of ``block`` px of flat colours; the label is the colour (``shuffle``: random labels)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for j in range(n):
            colour_ids = rng.integers(n_colours, size=(4, 4))
            img = block_image(colour_ids, COLOURS[:n_colours], block)
            labels = rng.integers(n_colours, size=(4, 4)) if shuffle else colour_ids
            mask = np.kron(labels, np.ones((block, block), dtype=np.int64)).astype(np.uint8)
            mask[0, :5] = 255  # a few ignore pixels
            save(img, root / split / "images" / f"im{j}.png")
            m = Image.fromarray(mask, mode="L") if split == "train" else palette_mask(mask)
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            m.save(root / split / "masks" / f"im{j}.png")
    return root


def palette_mask(mask: np.ndarray) -> Image.Image:
    im = Image.fromarray(mask, mode="P")
    im.putpalette(voc_colormap().ravel().tolist())
    return im


def make_lost(root: Path, n: int = 8, size: tuple[int, int] = (336, 224), cell: int = 28, seed: int = 0, wrong_boxes: bool = False) -> Path:
    """A bright 3x3-cell square at a random cell-aligned place on a dark flat background.

    At resolution 112 a (336, 224) image is halved, so a 28 px cell is one 14 px patch: this
    exercises the mapping of the predicted box back to original pixels. ``wrong_boxes`` annotates
    the diagonally opposite place instead (a control that must fail)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir(parents=True)
    w, h = size
    cw, ch = w // cell, h // cell
    for j in range(n):
        img = np.full((h, w, 3), rng.integers(20, 70), dtype=np.uint8)
        x, y = int(rng.integers(0, cw - 2)), int(rng.integers(0, ch - 2))
        img[y * cell : (y + 3) * cell, x * cell : (x + 3) * cell] = rng.integers(200, 256)
        if wrong_boxes:
            x, y = cw - 3 - x, ch - 3 - y
            if abs(x - (cw - 3 - x)) < 2 and abs(y - (ch - 3 - y)) < 2:  # too close to the truth: move it
                x = 0 if x > cw // 2 else cw - 3
        x0, y0, x1, y1 = x * cell, y * cell, (x + 3) * cell, (y + 3) * cell
        save(img, root / "images" / f"im{j}.png")
        (root / "annotations" / f"im{j}.xml").write_text(
            f"<annotation><object><name>square</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>"
        )
    return root


def make_planted_vit(positions: list[int], scale: float = 200.0) -> tuple[TimmViTBackbone, torch.Tensor]:
    """A tiny ViT (8x8 grid at 112 px) whose positional embedding carries a huge vector u at
    ``positions`` (row-major patch indices): the residual stream keeps those tokens high-norm."""
    bb = tiny_vit(img_size=112)
    u = torch.nn.functional.normalize(torch.randn(48, generator=torch.Generator().manual_seed(1)), dim=0)
    with torch.no_grad():
        for p in positions:
            bb.model.pos_embed[0, bb.num_prefix_tokens + p] += scale * u
    return bb, u


# -- metric functions against hand-computed values ---------------------------------------


def test_confusion_miou_pixel_accuracy_hand_computed():
    # gt/pred pairs: class 0: 3 right, 1 -> class 1; class 1: 2 right; class 2: 1 -> class 0; two ignored.
    gt = np.array([0, 0, 0, 0, 1, 1, 2, 255, 255])
    pred = np.array([0, 0, 0, 1, 1, 1, 0, 2, 1])
    conf = confusion_matrix(gt, pred, num_classes=4)  # class 3 absent from both: left out of the mean
    np.testing.assert_array_equal(conf[:3, :3], [[3, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert conf.sum() == 7
    # IoU: 3/(4+4-3), 2/(2+3-2), 0/(1+0-0)
    assert miou(conf) == pytest.approx((3 / 5 + 2 / 3 + 0.0) / 3)
    assert pixel_accuracy(conf) == pytest.approx(5 / 7)
    assert miou(np.eye(3) * 5) == 1.0


def test_hungarian_matching_and_box_iou_corloc():
    conf = np.array([[1, 9, 0], [8, 2, 0], [0, 1, 7]])  # rows: labels, columns: clusters
    np.testing.assert_array_equal(hungarian_mapping(conf), [1, 0, 2])
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 5, 15, 15], [0, 0, 10, 20], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[25 / 175, 0.5, 0.0]])
    preds = [np.array([0, 0, 10, 10]), np.array([0, 0, 10, 10]), np.array([0, 0, 10, 10])]
    gts = [np.array([[0, 0, 10, 20]]), np.array([[5, 5, 15, 15]]), np.array([[50, 50, 60, 60], [1, 1, 10, 10]])]
    assert corloc(preds, gts) == pytest.approx(2 / 3)  # IoU exactly 0.5 counts; any GT box may match


def test_knn_voting_on_2d_toy_features():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])  # scale is irrelevant: cosine
    labels = torch.tensor([0, 1, 1])
    a = math.radians(20)
    query = torch.tensor([[math.cos(a), math.sin(a)]])
    votes = knn_votes(train, labels, query, k=3, num_classes=2, temperature=0.07)
    expected = [math.exp(math.cos(a) / 0.07), 2 * math.exp(math.sin(a) / 0.07)]
    np.testing.assert_allclose(votes[0].numpy(), expected, rtol=1e-5)
    # at 40 degrees the nearest neighbour is class 0, but two class-1 neighbours are close behind
    b = math.radians(40)
    q2 = torch.tensor([[math.cos(b), math.sin(b)]])
    w0, w1 = math.exp(math.cos(b) / 0.07), math.exp(math.sin(b) / 0.07)
    assert w0 > w1 and 2 * w1 < w0  # class 0 wins at k=1 and at k=3 with T = 0.07
    top1 = knn_top1(train, labels, q2, torch.tensor([0]), ks=(1, 3, 200))
    assert top1 == {1: 1.0, 3: 1.0, 200: 1.0}  # k = 200 is capped at the 3 train samples
    top1_hot = knn_top1(train, labels, q2, torch.tensor([0]), ks=(1, 3), temperature=1.0)
    assert top1_hot == {1: 1.0, 3: 0.0}  # with T = 1, 2·e^sin > e^cos: the majority wins


def test_lost_box_on_synthetic_keys():
    grid = (5, 6)
    keys = torch.tensor([1.0, 0.0]).repeat(30, 1)
    obj = [r * 6 + c for r in (1, 2) for c in (3, 4, 5)]
    keys[obj] = torch.tensor([-1.0, 0.3])
    box, seed = lost_box(keys, grid, k_patches=100)
    assert seed in obj  # fewest positive correlations: 5 against 23
    assert box == (3, 1, 6, 3)
    assert lost_box(keys, grid, k_patches=1)[0] == (3, 1, 6, 3)


def test_kmeans_recovers_separated_blobs():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 4, generator=g) * 0.1 + 3, torch.randn(70, 4, generator=g) * 0.1 - 3])
    _, labels, _ = kmeans(x, 2, seed=0)
    assert labels[:50].unique().numel() == 1 and labels[50:].unique().numel() == 1 and labels[0] != labels[-1]


def test_crop_geometry_mirrors_preprocess():
    for (w, h), res, square in [((100, 60), 56, True), ((60, 100), 56, False), ((336, 224), 112, False), ((57, 57), 42, True)]:
        geo = crop_geometry(w, h, res, 14, square)
        out = preprocess(Image.new("RGB", (w, h)), res, 14, (0.5,) * 3, (0.5,) * 3, square=square)
        assert out.shape[1:] == (geo.height, geo.width)
    geo = crop_geometry(336, 224, 112, 14, square=False)  # exactly halved, nothing cropped
    assert geo.to_original((14, 28, 42, 56)) == (28, 56, 84, 112)
    # CenterCrop(60) first (offset round(40 / 2) = 20), then the bottom/right trim to 56 (the reference)
    assert crop_geometry(100, 60, 60, 14, square=True).original_box() == (20, 0, 76, 56)


def test_mask_and_annotation_readers(tmp_path):
    mask = np.array([[0, 1, 2], [15, 255, 0]], dtype=np.uint8)
    palette_mask(mask).save(tmp_path / "p.png")
    Image.fromarray(mask, mode="L").save(tmp_path / "l.png")
    Image.fromarray(voc_colormap()[mask]).save(tmp_path / "rgb.png")
    for name in ("p.png", "l.png", "rgb.png"):
        np.testing.assert_array_equal(load_mask(tmp_path / name), mask)
    Image.fromarray(np.full((2, 3, 3), 7, dtype=np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(SinderError, match="VOC palette"):
        load_mask(tmp_path / "bad.png")
    (tmp_path / "a.xml").write_text(
        "<annotation><object><bndbox><xmin>1</xmin><ymin>11</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )
    np.testing.assert_array_equal(read_voc_boxes(tmp_path / "a.xml"), [[0, 10, 30, 40]])


def test_intrinsic_statistics_on_synthetic_grids():
    g = torch.Generator().manual_seed(0)
    u, v = torch.eye(16)[0], torch.eye(16)[1]
    base = torch.nn.functional.normalize(torch.randn(2, 10, 10, 16, generator=g), dim=-1)
    base[..., :2] = 0  # background orthogonal to u and v, every norm exactly 1 after renormalising
    base = torch.nn.functional.normalize(base, dim=-1)
    grid = base.clone()
    grid[0, 3, 4] = 20 * (u + v) / math.sqrt(2)
    grid[0, 6, 6] = 20 * (u + v) / math.sqrt(2)
    grid[1, 5, 2] = 20 * (u - v) / math.sqrt(2)
    grid[1, 0, 9] = 20 * (u - v) / math.sqrt(2)  # on the border: a defect too (the rule sees the whole grid)
    stats = IntrinsicStats(direction=u)
    stats.update(Tokens([grid], [0], None, None))
    m = stats.metrics()
    assert m["high_norm_rate"] == pytest.approx(4 / 200)
    assert m["max_over_median"] == pytest.approx(20.0, rel=1e-5)
    assert m["defect_rate"] == pytest.approx(4 / 200)
    assert m["direction_consistency_deg"] == pytest.approx(90.0, abs=1e-3)  # (u+v) vs (u-v)
    # without a direction the defect metrics are undefined, not zero
    no_dir = IntrinsicStats()
    no_dir.update(Tokens([grid], [0], None, None))
    assert no_dir.metrics()["defect_rate"] is None and no_dir.metrics()["direction_consistency_deg"] is None
    const = torch.ones(1, 4, 5, 3)
    checker = ((torch.arange(4)[:, None] + torch.arange(5)[None]) % 2 * 2 - 1).float()[None, :, :, None] * const
    assert float(neighbour_consistency(const)) == pytest.approx(1.0)
    assert float(neighbour_consistency(checker)) == pytest.approx(-1.0)


# -- tasks end to end on generated data ---------------------------------------------------


def test_knn_separates_colour_classes_and_shuffled_control_is_at_chance(tmp_path):
    root = make_knn(tmp_path / "knn")
    (root / "val" / "class0" / "broken.jpg").write_bytes(b"not an image")
    cfg = EvaluateConfig(resolution=56, batch_size=16, knn_ks=KNN_KS)
    metrics, info = evaluate_with_info(tiny_vit(), "knn", root, cfg)
    assert set(metrics) == KNN_KEYS
    assert min(metrics.values()) >= 0.9
    assert info["num_images"] == {"train": 24, "val": 15}
    assert [s["path"].endswith("broken.jpg") for s in info["skipped"]] == [True]
    control = evaluate(tiny_vit(), "knn", make_knn(tmp_path / "shuffled", shuffle=True), cfg)
    assert max(control.values()) <= 0.6  # chance is 1/3


def test_knn_report_compares_models_and_writes_metrics(tmp_path):
    root = make_knn(tmp_path / "knn", n_train=3, n_val=2)
    cfg = EvaluateConfig(resolution=56, knn_ks=(5, 9))
    no_cls = tiny_vit(seed=1, class_token=False, global_pool="avg")
    report = evaluate_models([(tiny_vit(seed=0), None), (no_cls, None)], "knn", root, cfg)
    assert list(report["models"]) == ["test:tiny", "test:tiny #2"]
    assert all(v is None for k, v in report["models"]["test:tiny #2"].items() if not k.startswith("patch_"))
    assert min(v for k, v in report["models"]["test:tiny #2"].items() if k.startswith("patch_")) >= 0.9
    table = format_table(report).splitlines()
    assert len(table) == 4 and table[0].split()[1:] == list(report["models"]["test:tiny"])
    assert table[3].split()[2:4] == ["-"] * 2
    path = write_metrics(tmp_path / "out", report)
    assert json.loads(path.read_text())["models"] == report["models"]
    with pytest.raises(OutputExistsError):
        write_metrics(tmp_path / "out", report)
    write_metrics(tmp_path / "out", report, overwrite=True)


def test_linear_seg_probe_reaches_high_miou_and_shuffled_control_does_not(tmp_path):
    root = make_seg(tmp_path / "seg")
    (root / "train" / "images" / "broken.png").write_bytes(b"\x89PNG garbage")
    (root / "train" / "masks" / "broken.png").write_bytes(b"\x89PNG garbage")
    save(np.zeros((112, 112, 3), np.uint8), root / "val" / "images" / "nomask.png")
    cfg = EvaluateConfig(resolution=112)
    metrics, info = evaluate_with_info(tiny_vit(), "linear-seg", root, cfg)
    assert set(metrics) == {"miou", "pixel_acc"}
    assert metrics["miou"] >= 0.9 and metrics["pixel_acc"] >= 0.95
    assert info["num_images"] == {"train": 12, "val": 6} and info["num_classes"] == 3
    assert sorted(Path(s["path"]).name for s in info["skipped"]) == ["broken.png", "nomask.png"]
    control = evaluate(tiny_vit(), "linear-seg", make_seg(tmp_path / "shuffled", shuffle=True), cfg)
    assert control["miou"] <= 0.6


def test_unsup_seg_two_colours(tmp_path):
    cfg = EvaluateConfig(resolution=112)
    metrics = evaluate(tiny_vit(), "unsup-seg", make_seg(tmp_path / "seg", n_colours=2, n_train=1), cfg)
    assert metrics["miou"] >= 0.9 and metrics["pixel_acc"] >= 0.95
    control = evaluate(tiny_vit(), "unsup-seg", make_seg(tmp_path / "shuffled", n_colours=2, n_train=1, shuffle=True), cfg)
    assert control["miou"] <= 0.6


def test_lost_finds_the_bright_square(tmp_path):
    cfg = EvaluateConfig(resolution=112)
    assert evaluate(tiny_vit(), "lost", make_lost(tmp_path / "lost"), cfg) == {"corloc": 1.0}
    assert evaluate(tiny_vit(), "lost", make_lost(tmp_path / "wrong", wrong_boxes=True), cfg)["corloc"] <= 0.2


def test_intrinsic_on_planted_high_norm_tokens(tmp_path):
    folder = make_lost(tmp_path / "lost", n=4, size=(112, 112), cell=14) / "images"
    cfg = EvaluateConfig(resolution=112)
    planted = [18, 45]  # interior cells of the 8x8 grid
    bb, u = make_planted_vit(planted)
    m, info = evaluate_with_info(bb, "intrinsic", folder, cfg, direction=u)
    assert info["num_images"] == 4
    assert m["high_norm_rate"] == pytest.approx(2 / 64)
    assert m["defect_rate"] == pytest.approx(2 / 64)
    assert m["max_over_median"] > 10
    assert m["direction_consistency_deg"] < 5
    with_theory = evaluate(bb, "intrinsic", folder, cfg)  # ν_L from sinder.theory when it is importable
    assert set(with_theory) == set(m) and with_theory["high_norm_rate"] == m["high_norm_rate"]
    clean, _ = evaluate_with_info(tiny_vit(img_size=112), "intrinsic", folder, cfg, direction=u)
    assert clean["high_norm_rate"] == 0.0 and clean["max_over_median"] < 3
    assert clean["neighbour_consistency"] > m["neighbour_consistency"]


# -- configuration and CLI ----------------------------------------------------------------


def test_config_is_validated():
    with pytest.raises(ConfigError, match="--batch-size must be >= 1"):
        EvaluateConfig(batch_size=0)
    with pytest.raises(ConfigError, match="device"):
        EvaluateConfig(device="tpu")
    with pytest.raises(ConfigError, match="unknown task"):
        evaluate(tiny_vit(), "segment", ".")


def test_cli_end_to_end_knn(tmp_path, capsys):
    from sinder.cli import main

    root = make_knn(tmp_path / "knn", n_train=7, n_val=2)
    out = tmp_path / "out"
    argv = [
        "evaluate",
        "timm:vit_tiny_patch16_224",
        "--random-init",
        "--task",
        "knn",
        "--data",
        str(root),
        "--out",
        str(out),
        "--resolution",
        "64",
        "--device",
        "cpu",
        "--knn-k",
        *map(str, KNN_KS),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "timm:vit_tiny_patch16_224" in printed and "top1@10" in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["task"] == "knn" and saved["data"] == str(root)
    assert list(saved["models"]) == ["timm:vit_tiny_patch16_224"]
    assert set(saved["models"]["timm:vit_tiny_patch16_224"]) == KNN_KEYS

    assert main(argv) == 2  # refuses to replace metrics.json
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert main(argv + ["--overwrite"]) == 0
    capsys.readouterr()

    bad = tmp_path / "flat"
    save(np.zeros((32, 32, 3), np.uint8), bad / "a.png")
    assert (
        main(
            ["evaluate", "timm:vit_tiny_patch16_224", "--random-init", "--task", "knn", "--data", str(bad), "--out", str(tmp_path / "out2")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DIR/train/CLASS" in err[0]
    assert not (tmp_path / "out2").exists()


# -- degenerate data: refused with one actionable line, nothing written -------------------

CLI_MODEL = ["timm:vit_tiny_patch16_224", "--random-init", "--device", "cpu"]


def write_seg_split(root: Path, split: str, masks: list[np.ndarray]) -> None:
    """Images of flat random colours beside the given (H, W) masks."""
    rng = np.random.default_rng(len(masks))
    for j, mask in enumerate(masks):
        save(np.full((*mask.shape, 3), rng.integers(0, 256, 3), dtype=np.uint8), root / split / "images" / f"im{j}.png")
        save(mask.astype(np.uint8), root / split / "masks" / f"im{j}.png")


def halves(h: int = 112, w: int = 112) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[:, w // 2 :] = 1
    return mask


def seg_single_class(root: Path) -> Path:
    return make_seg(root, n_colours=1, n_train=1, n_val=3)


def seg_only_ignore(root: Path) -> Path:
    write_seg_split(root, "val", [np.full((112, 112), 255, np.uint8)] * 2)
    return root


def seg_train_single_class(root: Path) -> Path:
    write_seg_split(root, "train", [np.zeros((112, 112), np.uint8)] * 2)
    write_seg_split(root, "val", [halves()] * 2)
    return root


def seg_val_single_class(root: Path) -> Path:
    write_seg_split(root, "train", [halves()] * 2)
    write_seg_split(root, "val", [np.full((112, 112), 1, np.uint8)] * 2)
    return root


def seg_second_class_outside_crop(root: Path) -> Path:
    """Class 1 only in the left sixth of a 3:1 image: the square centre crop that is evaluated holds class 0 alone."""
    mask = np.zeros((56, 168), np.uint8)
    mask[:, :28] = 1
    write_seg_split(root, "val", [mask] * 2)
    return root


def seg_more_classes_than_tokens(root: Path) -> Path:
    """5 classes (4 quadrants and a centre square) on one image of 2x2 patches."""
    mask = np.kron(np.arange(4, dtype=np.uint8).reshape(2, 2), np.ones((16, 16), np.uint8))
    mask[12:20, 12:20] = 4
    write_seg_split(root, "val", [mask])
    return root


def knn_single_class(root: Path) -> Path:
    make_knn(root, n_train=4, n_val=2)
    for split in ("train", "val"):
        for d in (root / split / "class1", root / split / "class2"):
            for f in d.iterdir():
                f.rename(root / split / "class0" / f"moved_{d.name}_{f.name}")
            d.rmdir()
    return root


def knn_disjoint_classes(root: Path) -> Path:
    make_knn(root, n_train=4, n_val=2)
    for d in (root / "val").iterdir():
        d.rename(d.with_name(f"val_{d.name}"))
    return root


def lost_no_boxes(root: Path) -> Path:
    make_lost(root, n=2, size=(112, 112), cell=14)
    for xml in (root / "annotations").iterdir():
        xml.write_text("<annotation><object><name>square</name></object></annotation>")
    return root


def lost_empty_boxes(root: Path) -> Path:
    make_lost(root, n=2, size=(112, 112), cell=14)
    for xml in (root / "annotations").iterdir():
        xml.write_text(
            "<annotation><object><bndbox><xmin>9</xmin><ymin>1</ymin><xmax>3</xmax><ymax>5</ymax></bndbox></object></annotation>"
        )
    return root


# (task, data builder, extra options, what the one line must say)
DEGENERATE = {
    "unsup-seg one class": ("unsup-seg", seg_single_class, [], "unsup-seg: the masks in"),
    "unsup-seg only ignore": ("unsup-seg", seg_only_ignore, [], "only ignore (255) pixels; mIoU needs at least 2 classes"),
    "unsup-seg one class in the crop": (
        "unsup-seg",
        seg_second_class_outside_crop,
        ["--resolution", "32"],
        "single class (0) in the usable images' centre crops; mIoU",
    ),
    "unsup-seg fewer tokens than classes": (
        "unsup-seg",
        seg_more_classes_than_tokens,
        ["--resolution", "32"],
        "5 classes need at least 5 patch tokens, the val images give 4",
    ),
    "unsup-seg one patch": ("unsup-seg", make_seg, ["--resolution", "16"], "1 patch(es) per side"),
    "linear-seg one train class": ("linear-seg", seg_train_single_class, [], "train/masks hold a single class (0); a linear probe"),
    "linear-seg one val class": ("linear-seg", seg_val_single_class, [], "val/masks hold a single class (1); mIoU"),
    "knn one class": ("knn", knn_single_class, ["--knn-k", "5"], "train holds a single class (class0)"),
    "knn fewer images than k": ("knn", make_knn, ["--knn-k", "10", "30", "200"], "has 24 images, fewer than k=30, 200; pass --knn-k"),
    "knn no shared class": ("knn", knn_disjoint_classes, ["--knn-k", "5"], "no val class of"),
    "lost no boxes": ("lost", lost_no_boxes, [], "has no object box"),
    "lost empty boxes": ("lost", lost_empty_boxes, [], "has a box with xmax < xmin"),
    "lost one patch": ("lost", make_lost, ["--resolution", "16"], "lost needs at least 32 px"),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_cli_refuses_degenerate_data(case, tmp_path, capsys, caplog):
    from sinder.cli import main

    task, build, extra, needle = DEGENERATE[case]
    data, out = build(tmp_path / "data"), tmp_path / "out"
    argv = ["evaluate", *CLI_MODEL, "--task", task, "--data", str(data), "--out", str(out), "--resolution", "112", *extra]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sinder evaluate: error: "), captured.err
    assert needle in err[0] and "Traceback" not in captured.err
    assert captured.out == "" and not out.exists()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_unsup_seg_single_class_is_refused_not_scored(tmp_path):
    """Issue #8: masks of one class gave mIoU 1.0000 and exit 0. Now: exit 2, one line, nothing written."""
    data, out = seg_single_class(tmp_path / "data"), tmp_path / "out"
    argv = ["evaluate", *CLI_MODEL, "--task", "unsup-seg", "--data", str(data), "--out", str(out), "--resolution", "112"]
    proc = run_sinder(*argv)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"sinder evaluate: error: unsup-seg: the masks in {data / 'val' / 'masks'} hold a single class (0); "
        "mIoU needs at least 2 classes: pass masks with background and object labels"
    ]
    assert not out.exists()
    with pytest.raises(ConfigError, match="single class"):  # the Python API says the same
        evaluate(tiny_vit(img_size=112), "unsup-seg", data, EvaluateConfig(resolution=112))


def test_knn_warns_about_val_classes_missing_from_train(tmp_path, caplog):
    root = make_knn(tmp_path / "knn", n_train=4, n_val=2)
    (root / "val" / "class2").rename(root / "val" / "clas2")  # a typo: scored as misses, and said once
    with caplog.at_level(logging.WARNING):
        m = evaluate(tiny_vit(), "knn", root, EvaluateConfig(resolution=56, knn_ks=(5,)))
    assert m["top1@5"] <= 2 / 3 + 1e-6
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "clas2" in warnings[0]
