"""sinder evaluate on the standard layouts as they unpack (issue #9): tiny replicas of Pascal VOC
(VOCdevkit/VOC20XX), ADE20K (ADEChallengeData2016) and ImageNet-style class folders are read with
the right images beside the right masks, boxes and classes; the pipeline runs end to end on them
with planted:small; each wrong layout is one line naming the expected one. Also LOST's key Gram
bias (registers paper §3.3): 0 is LOST as before, a bias moves every sign test."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sinder.errors import ConfigError, SinderError
from sinder.evaluate import EvaluateConfig, evaluate_with_info, load_layout
from sinder.evaluate.datasets import IGNORE, LAYOUTS, ZeroIgnoredMask, load_mask, read_voc_boxes, voc_colormap
from sinder.evaluate.lost import degrees, key_gram, lost_box

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see the fixture

SEG_EXPECTS = "Pascal VOC expects VOCdevkit/VOC20XX/{ImageSets/Segmentation/{train,val}.txt, JPEGImages/, SegmentationClass/}"
VAL_EXPECTS = "Pascal VOC expects VOCdevkit/VOC20XX/{ImageSets/Segmentation/val.txt, JPEGImages/, SegmentationClass/}"
LOST_EXPECTS = "Pascal VOC expects VOCdevkit/VOC20XX/{ImageSets/Main/trainval.txt, JPEGImages/, Annotations/}"
ADE_EXPECTS = "ADE20K expects ADEChallengeData2016/{images,annotations}/{training,validation}/ (STEM.jpg beside STEM.png)"
ADE_VAL_EXPECTS = "ADE20K expects ADEChallengeData2016/{images,annotations}/validation/ (STEM.jpg beside STEM.png)"

# VOC ids, deliberately not in sorted order (the ImageSets order is the order read); class index per id
VOC_IDS = {"2008_000007": 12, "2008_000002": 15, "2008_000005": 8, "2009_000001": 12, "2008_000003": 15, "2009_000004": 8}
TRAIN, VAL = list(VOC_IDS)[:3], list(VOC_IDS)[3:]
MISSING = "2008_000099"  # listed in train.txt, absent from JPEGImages/
UNLISTED = "2010_000001"  # in JPEGImages/ and SegmentationClass/, listed nowhere
W, H = 112, 84
BOX = (35, 21, 77, 63)  # the object, 0-based half-open (x0, y0, x1, y1): inside the centre crop


def object_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), rng.integers(20, 80, 3), dtype=np.uint8)
    x0, y0, x1, y1 = BOX
    img[y0:y1, x0:x1] = rng.integers(170, 256, 3)
    return img


def object_mask(cls: int, zero: int = 0) -> np.ndarray:
    mask = np.full((H, W), zero, dtype=np.uint8)
    x0, y0, x1, y1 = BOX
    mask[y0:y1, x0:x1] = cls
    mask[y0, x0:x1] = IGNORE  # a boundary row, as VOC draws its 255 outlines
    return mask


def palette_png(mask: np.ndarray, path: Path) -> None:
    im = Image.fromarray(mask, mode="P")
    im.putpalette(voc_colormap().ravel().tolist())
    im.save(path)


def make_voc(root: Path, year: str = "2012") -> Path:
    """root/VOCdevkit/VOC<year> with the segmentation and detection parts of the real archive."""
    voc = root / "VOCdevkit" / f"VOC{year}"
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    for j, (stem, cls) in enumerate({**VOC_IDS, UNLISTED: 15}.items()):
        Image.fromarray(object_image(j)).save(voc / "JPEGImages" / f"{stem}.jpg")
        palette_png(object_mask(cls), voc / "SegmentationClass" / f"{stem}.png")
        x0, y0, x1, y1 = BOX
        (voc / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{W}</width><height>{H}</height><depth>3</depth></size>"
            f"<object><name>obj{cls}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>"
        )
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join([*TRAIN[:2], MISSING, TRAIN[2]]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(VAL) + "\n")
    (voc / "ImageSets/Main/trainval.txt").write_text("\n".join(VOC_IDS) + "\n")
    (voc / "ImageSets/Main/dog_trainval.txt").write_text("".join(f"{s}  1\n" for s in VOC_IDS))  # class lists are not read
    return voc


ADE_LABELS = [(1, 5), (150, 1), (5, 150)]  # (object label, background label) per image, as stored (0 = other)


def make_ade(root: Path) -> Path:
    ade = root / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        (ade / "images" / split).mkdir(parents=True)
        (ade / "annotations" / split).mkdir(parents=True)
        for j, (obj, bg) in enumerate(ADE_LABELS):
            stem = f"{prefix}_{j + 1:08d}"
            Image.fromarray(object_image(10 + j)).save(ade / "images" / split / f"{stem}.jpg")
            mask = object_mask(obj, zero=bg)
            mask[-4:, :] = 0  # a strip of "other"
            mask[0, :3] = 255
            Image.fromarray(mask, mode="L").save(ade / "annotations" / split / f"{stem}.png")
    Image.fromarray(object_image(99)).save(ade / "images" / "training" / "ADE_train_00000099.jpg")  # no annotation
    (ade / "sceneCategories.txt").write_text("ADE_train_00000001 bathroom\n")
    return ade


def make_class_folders(root: Path) -> Path:
    """ImageNet-style: train/CLASS/*, val/CLASS/* (a sub-folder inside a class, a stray text file, a hidden folder)."""
    rng = np.random.default_rng(0)
    layout = {"train": {"n01440764": 3, "n02102040": 2}, "val": {"n01440764": 2, "n02102040": 1, "n03000684": 1}}
    for split, classes in layout.items():
        for cls, n in classes.items():
            for j in range(n):
                sub = root / split / cls / ("nested" if j == 0 else "")
                sub.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(sub / f"{cls}_{j}.JPEG")
    (root / "train" / "n01440764" / "notes.txt").write_text("not an image")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "train" / ".ipynb_checkpoints" / "x.png")
    return root


# -- what is read: images beside their labels ---------------------------------------------


@pytest.mark.parametrize("where", ["root", "VOCdevkit", "VOC2012"])
def test_voc_segmentation_pairs_listed_images_with_their_masks(tmp_path, where):
    voc = make_voc(tmp_path)
    data = {"root": tmp_path, "VOCdevkit": voc.parent, "VOC2012": voc}[where]
    splits = load_layout("linear-seg", data)
    assert set(splits) == {"train", "val"}
    for split, ids in (("train", TRAIN), ("val", VAL)):
        s = splits[split]
        assert [p.stem for p in s.images] == ids  # the ImageSets order, the unlisted image left out
        assert s.images == [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
        assert s.masks == [voc / "SegmentationClass" / f"{i}.png" for i in ids]
        for stem, mask_path in zip(ids, s.masks):
            mask = load_mask(mask_path)
            assert mask.shape == (H, W)
            assert sorted(np.unique(mask)) == [0, VOC_IDS[stem], IGNORE]  # palette indices; 255 kept as ignore
    assert splits["train"].skipped == [
        {"path": str(voc / "JPEGImages" / f"{MISSING}.jpg"), "reason": "listed in ImageSets/Segmentation/train.txt but not in JPEGImages/"}
    ]
    assert splits["val"].skipped == []
    assert list(load_layout("unsup-seg", data)) == ["val"]


def test_voc_year_outside_vocdevkit_is_read_and_blank_list_lines_are_ignored(tmp_path):
    voc = make_voc(tmp_path).rename(tmp_path / "VOC2012")  # moved out of VOCdevkit/
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(["", *TRAIN[:2], "  ", MISSING, TRAIN[2], "", ""]) + "\n")
    (voc / "ImageSets/Main/trainval.txt").write_text("\n" + "\n\n".join(VOC_IDS) + "\n\n")
    splits = load_layout("linear-seg", voc)
    assert splits["train"].images == [voc / "JPEGImages" / f"{i}.jpg" for i in TRAIN]
    assert splits["train"].masks == [voc / "SegmentationClass" / f"{i}.png" for i in TRAIN]
    assert [Path(s["path"]).name for s in splits["train"].skipped] == [f"{MISSING}.jpg"]  # no "JPEGImages/.jpg"
    boxes = load_layout("lost", voc)
    assert [p.stem for p in boxes.images] == list(VOC_IDS) and boxes.skipped == []
    assert all(a.parent == voc / "Annotations" for a in boxes.annotations)
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n \n")
    with pytest.raises(SinderError, match="val.txt lists no image"):
        load_layout("unsup-seg", voc)


def test_intrinsic_reads_only_the_photos_of_a_known_layout(tmp_path):
    voc = make_voc(tmp_path / "voc")
    photos = sorted(voc / "JPEGImages" / f"{i}.jpg" for i in [*VOC_IDS, UNLISTED])
    for data in (tmp_path / "voc", voc.parent, voc):  # never SegmentationClass/*.png
        assert load_layout("intrinsic", data) == photos
    ade = make_ade(tmp_path / "ade")
    for data in (tmp_path / "ade", ade):
        got = load_layout("intrinsic", data)
        assert len(got) == 2 * len(ADE_LABELS) + 1 and all(p.parent.parent == ade / "images" for p in got)
    knn = make_class_folders(tmp_path / "in")
    Image.fromarray(object_image(0)).save(knn / "cover.png")  # beside the class folders: not a class image
    got = load_layout("intrinsic", knn)
    assert len(got) == 9 and all(p.parts[-3] in ("train", "val") or p.parts[-4] in ("train", "val") for p in got)  # no hidden folder
    own = tmp_path / "own"
    for sub in ("images", "masks"):
        (own / "val" / sub).mkdir(parents=True)
    Image.fromarray(object_image(0)).save(own / "val" / "images" / "a.png")
    palette_png(object_mask(3), own / "val" / "masks" / "a.png")
    assert load_layout("intrinsic", own) == [own / "val" / "images" / "a.png"]
    plain = tmp_path / "plain"  # a folder of photos stays one: every image, recursively
    (plain / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(object_image(1)).save(plain / name)
    assert load_layout("intrinsic", plain) == [plain / "a.png", plain / "sub" / "b.png"]
    assert load_layout("intrinsic", voc / "JPEGImages") == photos
    shutil.copytree(voc, voc.with_name("VOC2007"))
    with pytest.raises(SinderError, match="holds VOC2007, VOC2012; pass --data .*VOCdevkit/VOC20XX .*JPEGImages/$"):
        load_layout("intrinsic", voc.parent)


def test_voc_detection_reads_trainval_boxes(tmp_path):
    voc = make_voc(tmp_path)
    (voc / "Annotations" / f"{VAL[0]}.xml").unlink()
    data = load_layout("lost", voc.parent)
    kept = [i for i in VOC_IDS if i != VAL[0]]
    assert [p.stem for p in data.images] == kept and [p.stem for p in data.annotations] == kept
    assert all(a.parent == voc / "Annotations" for a in data.annotations)
    assert data.skipped == [{"path": str(voc / "JPEGImages" / f"{VAL[0]}.jpg"), "reason": f"no Annotations/{VAL[0]}.xml"}]
    np.testing.assert_array_equal(read_voc_boxes(data.annotations[0]), [BOX])  # 1-based inclusive -> 0-based


def test_voc_year_choice(tmp_path):
    make_voc(tmp_path, "2012")
    make_voc(tmp_path, "2007")
    devkit = tmp_path / "VOCdevkit"
    assert load_layout("unsup-seg", tmp_path)["val"].images[0].parents[1].name == "VOC2012"  # the segmentation year
    assert load_layout("lost", devkit / "VOC2007").images[0].parents[1].name == "VOC2007"
    shutil.rmtree(devkit / "VOC2012")
    assert load_layout("linear-seg", devkit)["train"].images[0].parents[1].name == "VOC2007"  # the only year


def test_sinder_layout_wins_over_a_voc_like_name(tmp_path):
    own = tmp_path / "VOC2012"
    for sub in ("images", "masks"):
        (own / "val" / sub).mkdir(parents=True)
    Image.fromarray(object_image(0)).save(own / "val" / "images" / "a.png")
    palette_png(object_mask(3), own / "val" / "masks" / "a.png")
    split = load_layout("unsup-seg", own)["val"]
    assert split.images == [own / "val" / "images" / "a.png"] and split.masks == [own / "val" / "masks" / "a.png"]


@pytest.mark.parametrize("where", ["root", "ADEChallengeData2016"])
def test_ade_pairs_by_stem_and_shifts_labels(tmp_path, where):
    ade = make_ade(tmp_path)
    splits = load_layout("linear-seg", tmp_path if where == "root" else ade)
    for split, sub, prefix in (("train", "training", "ADE_train"), ("val", "validation", "ADE_val")):
        s = splits[split]
        stems = [f"{prefix}_{j + 1:08d}" for j in range(len(ADE_LABELS))]
        assert [p.stem for p in s.images] == stems and [p.stem for p in s.masks] == stems
        assert all(p.parent == ade / "annotations" / sub and isinstance(p, ZeroIgnoredMask) for p in s.masks)
        for (obj, bg), mask_path in zip(ADE_LABELS, s.masks):
            raw = np.array(Image.open(mask_path))
            mask = load_mask(mask_path)
            assert sorted(np.unique(mask)) == sorted({obj - 1, bg - 1, IGNORE})  # 1..150 -> 0..149, 0 -> ignore
            assert (mask[raw == 0] == IGNORE).all() and (mask[raw == IGNORE] == IGNORE).all()
            np.testing.assert_array_equal(mask[(raw > 0) & (raw < IGNORE)], raw[(raw > 0) & (raw < IGNORE)] - 1)
    assert [Path(s["path"]).name for s in splits["train"].skipped] == ["ADE_train_00000099.jpg"]
    assert splits["train"].skipped[0]["reason"] == "no annotations/training/ADE_train_00000099.png"
    np.testing.assert_array_equal(
        load_mask(Path(splits["val"].masks[0])), np.array(Image.open(splits["val"].masks[0]))
    )  # a plain path: no shift


def test_class_folders_follow_imagefolder(tmp_path):
    data = load_layout("knn", make_class_folders(tmp_path))
    assert data.classes == ["n01440764", "n02102040", "n03000684"]  # train's, sorted, then the val-only one
    assert len(data.train.paths) == 5 and len(data.val.paths) == 4  # text file and hidden folder ignored
    for part in (data.train, data.val):
        for path, label in zip(part.paths, part.labels):
            assert path.name.startswith(data.classes[label])  # every image under its own class
    assert data.train.labels == [0, 0, 0, 1, 1] and data.val.labels == [0, 0, 1, 2]
    assert any(p.parent.name == "nested" for p in data.train.paths)


# -- end to end on planted:small ------------------------------------------------------------

FAST = dict(resolution=56, batch_size=8, probe_steps=20, kmeans_restarts=1, kmeans_iters=20)


def test_evaluate_runs_on_voc_and_ade(tmp_path, planted):
    voc = make_voc(tmp_path / "voc")
    cfg = EvaluateConfig(**FAST)
    m, info = evaluate_with_info(planted, "linear-seg", tmp_path / "voc", cfg)
    assert set(m) == {"miou", "pixel_acc"} and all(0.0 <= v <= 1.0 for v in m.values())
    assert info["num_images"] == {"train": 3, "val": 3} and info["num_classes"] == 16  # labels 0..15 seen
    assert [Path(s["path"]).stem for s in info["skipped"]] == [MISSING]
    m, info = evaluate_with_info(planted, "unsup-seg", voc.parent, cfg)
    assert info["num_images"] == {"val": 3} and info["num_classes"] == 4  # background, 12, 15 and 8 in val
    m, info = evaluate_with_info(planted, "lost", voc, cfg)
    assert set(m) == {"corloc"} and 0.0 <= m["corloc"] <= 1.0 and info["num_images"] == len(VOC_IDS)
    m, info = evaluate_with_info(planted, "intrinsic", voc, cfg)
    assert info["num_images"] == len(VOC_IDS) + 1 and info["skipped"] == []  # the photos of JPEGImages/, no mask
    make_ade(tmp_path / "ade")
    m, info = evaluate_with_info(planted, "linear-seg", tmp_path / "ade", cfg)
    assert info["num_images"] == {"train": 3, "val": 3} and info["num_classes"] == 150  # label 150 -> class 149
    m, info = evaluate_with_info(planted, "knn", make_class_folders(tmp_path / "in"), EvaluateConfig(**FAST, knn_ks=(1, 3)))
    assert set(m) == {f"{p}top1@{k}" for p in ("", "patch_") for k in (1, 3)} and info["num_images"] == {"train": 5, "val": 4}


# -- wrong layouts: one line naming the expected layout --------------------------------------


def unlink(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def voc_case(change, task: str = "linear-seg", data: str = "."):
    def build(tmp: Path) -> tuple[str, Path, Path]:
        voc = make_voc(tmp)
        change(voc)
        return task, tmp / data, voc

    return build


# name -> (builder(tmp) -> (task, data, voc or ade), expected message with {voc}/{devkit}/{ade}/{root})
WRONG = {
    "voc no val list": (
        voc_case(lambda v: unlink(v / "ImageSets/Segmentation/val.txt")),
        f"{{voc}}: no ImageSets/Segmentation/val.txt; {SEG_EXPECTS}",
    ),
    "voc no masks folder": (
        voc_case(lambda v: unlink(v / "SegmentationClass"), "unsup-seg", "VOCdevkit"),
        f"{{voc}}: no SegmentationClass/ folder; {VAL_EXPECTS}",
    ),
    "voc no annotations folder": (
        voc_case(lambda v: unlink(v / "Annotations"), "lost"),
        f"{{voc}}: no Annotations/ folder; {LOST_EXPECTS}",
    ),
    "voc test-only (no trainval list)": (
        voc_case(lambda v: unlink(v / "ImageSets/Main/trainval.txt"), "lost"),
        f"{{voc}}: no ImageSets/Main/trainval.txt; {LOST_EXPECTS}",
    ),
    "voc empty list": (
        voc_case(lambda v: (v / "ImageSets/Segmentation/val.txt").write_text(""), "unsup-seg"),
        f"{{voc}}: ImageSets/Segmentation/val.txt lists no image; {VAL_EXPECTS}",
    ),
    "voc listed images all missing": (
        voc_case(lambda v: [p.unlink() for p in (v / "JPEGImages").iterdir()], "unsup-seg"),
        f"{{voc}}: no image listed in ImageSets/Segmentation/val.txt has both JPEGImages/STEM.jpg and SegmentationClass/STEM; {VAL_EXPECTS}",
    ),
    "voc wrong year": (
        voc_case(lambda v: v.rename(v.with_name("VOC2013"))),
        f"{{devkit}}: VOC2013 is not a Pascal VOC year torchvision reads (VOC2007 to VOC2012); {SEG_EXPECTS}",
    ),
    "voc no year folder": (voc_case(lambda v: unlink(v), "lost"), f"{{devkit}}: no VOC20XX folder; {LOST_EXPECTS}"),
    "voc two years for lost": (
        voc_case(lambda v: shutil.copytree(v, v.with_name("VOC2007")), "lost"),
        f"{{devkit}}: holds VOC2007, VOC2012; pass --data {{devkit}}/VOC20XX for the year to evaluate; {LOST_EXPECTS}",
    ),
}


def ade_case(change, task: str = "linear-seg"):
    def build(tmp: Path) -> tuple[str, Path, Path]:
        ade = make_ade(tmp)
        change(ade)
        return task, tmp, ade

    return build


def rename_annotations(ade: Path) -> None:
    for p in (ade / "annotations" / "validation").iterdir():
        p.rename(p.with_name("x" + p.name))


WRONG |= {
    "ade no validation annotations": (
        ade_case(lambda a: unlink(a / "annotations" / "validation")),
        f"{{ade}}: no annotations/validation/ folder; {ADE_EXPECTS}",
    ),
    "ade nothing paired": (
        ade_case(rename_annotations, "unsup-seg"),
        f"{{ade}}: no image of images/validation/ has its annotations/validation/STEM.png; {ADE_VAL_EXPECTS}",
    ),
}


def knn_case(change):
    def build(tmp: Path) -> tuple[str, Path, Path]:
        root = make_class_folders(tmp / "in")
        change(root)
        return "knn", root, root

    return build


WRONG |= {
    "knn empty class folder": (
        knn_case(lambda r: (r / "val" / "n09999999").mkdir()),
        f"{{root}}/in: val/ class folder(s) n09999999 hold no images; knn expects {LAYOUTS['knn']}",
    ),
    "knn no val folder": (knn_case(lambda r: unlink(r / "val")), f"{{root}}/in: no val/ folder; knn expects {LAYOUTS['knn']}"),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_wrong_layout_is_one_line_naming_the_expected_layout(case, tmp_path):
    build, expected = WRONG[case]
    task, data, where = build(tmp_path)
    with pytest.raises(SinderError) as err:
        load_layout(task, data)
    names = {"{voc}": where, "{devkit}": where.parent, "{ade}": where, "{root}": tmp_path}
    for name, path in names.items():
        expected = expected.replace(name, str(path))
    assert str(err.value) == expected
    assert "\n" not in str(err.value)


def test_cli_wrong_voc_layout_exits_2_with_one_line(tmp_path, capsys):
    from sinder.cli import main

    voc = make_voc(tmp_path / "data")
    (voc / "ImageSets/Segmentation/val.txt").unlink()
    out = tmp_path / "out"
    argv = ["evaluate", "planted:small", "--task", "linear-seg", "--data", str(tmp_path / "data"), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.splitlines() == [f"sinder evaluate: error: {voc}: no ImageSets/Segmentation/val.txt; {SEG_EXPECTS}"]
    assert not out.exists()


# -- LOST: the key Gram bias ----------------------------------------------------------------


def published_lost_box(keys: torch.Tensor, grid: tuple[int, int], k_patches: int = 100):
    """lost_box as it was before the bias existed (sinder's own earlier code), the reference for bias 0."""
    from scipy import ndimage

    a = keys.double() @ keys.double().T
    pos = a > 0
    pos.fill_diagonal_(False)
    order = torch.sort(pos.sum(1), stable=True).indices
    seed = int(order[0])
    potentials = order[: min(k_patches, order.numel())]
    similars = potentials[a[seed, potentials] > 0]
    if similars.numel() == 0:
        similars = torch.tensor([seed])
    labelled, _ = ndimage.label(a[similars].sum(0).reshape(grid).cpu().numpy() > 0)
    sy, sx = divmod(seed, grid[1])
    cc = labelled[sy, sx]
    if cc == 0:
        return (sx, sy, sx + 1, sy + 1), seed
    ys, xs = np.nonzero(labelled == cc)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), seed


def test_zero_bias_is_lost_as_before():
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        grid = (3 + trial % 5, 4 + trial % 3)
        keys = torch.randn(grid[0] * grid[1], 8, generator=g) + 0.3 * (trial % 4) * torch.randn(8, generator=g)
        k = 1 + trial % 12
        expected = published_lost_box(keys, grid, k)
        assert lost_box(keys, grid, k) == expected and lost_box(keys, grid, k, gram_bias=0.0) == expected


def test_bias_moves_the_degree_threshold():
    keys = torch.randn(20, 6, generator=torch.Generator().manual_seed(1))
    dots = (keys.double() @ keys.double().T).numpy()
    for bias in (-4.0, -0.5, 0.0, 1.5):
        torch.testing.assert_close(key_gram(keys, bias).numpy(), dots + bias)
        counted = [sum(1 for j in range(20) if j != i and dots[i, j] > -bias) for i in range(20)]
        assert degrees(key_gram(keys, bias)).tolist() == counted
    assert degrees(key_gram(keys, -4.0)).sum() < degrees(key_gram(keys, 0.0)).sum() < degrees(key_gram(keys, 1.5)).sum()


def test_bias_undoes_a_component_shared_by_all_keys():
    """Every key = m + ±e: all pairs correlate (10 ± 1 > 0), every degree ties and LOST boxes the
    whole grid; a bias of -‖m‖² recentres the keys and the 2x3 object is found again."""
    grid = (5, 6)
    m, e = torch.tensor([0.0, 0.0, 10**0.5]), torch.tensor([1.0, 0.0, 0.0])
    keys = (m + e).repeat(30, 1)
    obj = [r * 6 + c for r in (1, 2) for c in (3, 4, 5)]
    keys[obj] = m - e
    assert lost_box(keys, grid)[0] == (0, 0, 6, 5)
    box, seed = lost_box(keys, grid, gram_bias=-10.0)
    assert seed in obj and box == (3, 1, 6, 3)


def test_bias_reaches_lost_from_the_config_and_the_cli(tmp_path, planted, monkeypatch):
    import sinder.commands.evaluate as command
    import sinder.evaluate.lost as lost_module
    from sinder.cli import main

    seen = []

    def spy(keys, grid, k_patches=100, gram_bias=0.0):
        seen.append(gram_bias)
        return lost_box(keys, grid, k_patches, gram_bias)

    monkeypatch.setattr(lost_module, "lost_box", spy)
    voc = make_voc(tmp_path / "voc")
    evaluate_with_info(planted, "lost", voc, EvaluateConfig(**FAST, lost_gram_bias=-7.5))
    assert seen == [-7.5] * len(VOC_IDS)
    with pytest.raises(ConfigError, match="--lost-gram-bias must be a number, got nan"):
        EvaluateConfig(lost_gram_bias=float("nan"))

    configs = []

    def fake_models(models, task, data, config):
        configs.append(config)
        return {"task": task, "data": str(data), "models": {}, "details": {}, "config": {}}

    monkeypatch.setattr(command, "evaluate_models", fake_models)
    argv = ["evaluate", "planted:small", "--task", "lost", "--data", str(voc), "--out", str(tmp_path / "out"), "--lost-gram-bias", "-2.5"]
    assert main(argv) == 0 and configs[0].lost_gram_bias == -2.5
