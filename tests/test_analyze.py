"""`sinder analyze`: outputs, keys, and bad inputs (handled or skipped with a reason, never a traceback)."""

import json

import numpy as np
import pytest
from helpers.cli import run_sinder
from PIL import Image
from safetensors.torch import load_file

from sinder.cli import main


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory, photo_dir):
    d = tmp_path_factory.mktemp("bad")
    good = Image.open(photo_dir / "coffee.jpg")
    raw = (photo_dir / "coffee.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("this is not an image")
    good.convert("L").save(d / "gray.png")
    rgba = good.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "rgba.png")
    arr16 = (np.asarray(good.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(arr16).save(d / "sixteen.png")
    Image.new("RGB", (5, 5), (200, 10, 10)).save(d / "tiny.png")
    Image.new("RGB", (6000, 4000), (30, 90, 160)).save(d / "huge.jpg", quality=50)
    # Landscape pixels tagged "rotate 90°": the model must see a portrait image.
    exif = Image.Exif()
    exif[0x0112] = 6
    good.resize((300, 200)).save(d / "exif_rotated.jpg", exif=exif.tobytes())
    return d


@pytest.mark.slow
def test_outputs_and_keys(tmp_path, photo_dir):
    out = tmp_path / "an"
    assert main(["analyze", "planted:small", str(photo_dir), "--out", str(out)]) == 0
    summary = json.loads((out / "analysis.json").read_text())
    for key in (
        "model",
        "num_layers",
        "patch_size",
        "num_prefix_tokens",
        "resolution",
        "images",
        "skipped",
        "direction_consistency_deg",
        "layers",
    ):
        assert key in summary
    assert summary["num_layers"] == 12 and summary["patch_size"] == 14 and summary["resolution"] == 224
    layer_keys = {
        "index",
        "theory_alignment",
        "defect_rate",
        "high_norm_rate",
        "norm_median",
        "norm_max",
        "defect_norm_mean",
        "normal_norm_mean",
    }
    assert all(layer_keys <= set(layer) for layer in summary["layers"])
    assert len(summary["images"]) == 2 and summary["skipped"] == []
    directions = load_file(str(out / "directions.safetensors"))["directions"]
    assert tuple(directions.shape) == (12, 384)
    figs = {p.name for p in (out / "figures").iterdir()}
    assert {"violin_norms.png", "violin_angles.png"} <= figs
    assert sum(name.startswith("maps_") for name in figs) == 2
    for name in figs:
        Image.open(out / "figures" / name).verify()
    # Existing output is not overwritten without --overwrite.
    assert main(["analyze", "planted:small", str(photo_dir), "--out", str(out)]) == 2
    assert main(["analyze", "planted:small", str(photo_dir), "--out", str(out), "--overwrite"]) == 0
    # --overwrite with fewer images leaves no figure of the earlier run behind
    assert main(["analyze", "planted:small", str(photo_dir / "coffee.jpg"), "--out", str(out), "--overwrite"]) == 0
    assert sum(p.name.startswith("maps_") for p in (out / "figures").iterdir()) == 1


def test_bad_inputs_are_handled_or_skipped(tmp_path, bad_dir):
    out = tmp_path / "an"
    assert main(["analyze", "planted:small", str(bad_dir), "--out", str(out), "--no-figures", "--crop", "aspect"]) == 0
    summary = json.loads((out / "analysis.json").read_text())
    done = {img["path"].split("/")[-1]: img for img in summary["images"]}
    skipped = {s["path"].split("/")[-1]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"truncated.jpg", "empty.jpg", "text.png", "tiny.png"}
    assert "empty" in skipped["empty.jpg"] and "small" in skipped["tiny.png"]
    assert set(done) == {"gray.png", "rgba.png", "sixteen.png", "huge.jpg", "exif_rotated.jpg"}
    h, w = done["exif_rotated.jpg"]["grid"]
    assert h > w, "EXIF orientation must be applied"
    h, w = done["huge.jpg"]["grid"]
    assert min(h, w) == 16 and max(h, w) == 24  # 6000x4000 resized to short side 224


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["analyze", "nosuch:model", "x.jpg", "--out", "o"], "unknown model spec"),
        (["analyze", "timm:not_a_model", "IMG", "--out", "o", "--random-init"], "no model"),
        (["analyze", "planted:small", "/no/such/file.jpg", "--out", "o"], "not found"),
        (["analyze", "planted:small", "IMG", "--out", "o", "--mask-thr", "-1"], "--mask-thr"),
    ],
)
def test_user_errors_are_one_line(tmp_path, photo_dir, argv, needle):
    argv = [str(photo_dir) if a == "IMG" else a for a in argv]
    argv = [str(tmp_path / "o") if a == "o" else a for a in argv]
    proc = run_sinder(*argv)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    # info lines ("loading MODEL") may come first; the error is one line, and the last
    assert lines and lines[-1].startswith("sinder analyze: error: ") and needle in lines[-1], proc.stderr
    assert sum(": error: " in line for line in lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (403, 397), (225, 225)])
def test_square_preprocessing_is_the_references_torchvision_pipeline(size):
    """Resize(short side, long side truncated) + CenterCrop + ToTensor + Normalize, bit for bit."""
    import torch
    from torchvision import transforms

    from sinder.images import preprocess

    rng = np.random.default_rng(sum(size))
    img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )(img)
    assert torch.equal(preprocess(img, 224, 14, mean, std, square=True), reference)


def test_low_norm_artifacts_are_reported_not_silently_dropped_by_the_norm_gate():
    """CLIP-style artifacts: aligned with ν but of *lower* norm than their neighbours. The warning
    reads what the gate-rejected tokens look like (GateRejectedStats), not only how many they are, and
    the "auto" decision counts them from the block that has them."""
    from dataclasses import replace

    import torch

    from sinder.detect import DefectRule, DefectStats, detect_layer
    from sinder.measure import GateRejectedStats
    from sinder.verdict import choose_low_norm, gate_warning

    g = torch.Generator().manual_seed(0)
    nu = torch.zeros(32)
    nu[0] = 1.0
    grid = torch.randn(2, 12, 12, 32, generator=g)
    grid[..., 0] = 0.0
    for b, r, c in ((0, 3, 4), (0, 7, 7), (1, 5, 5)):
        grid[b, r, c] = 0.5 * nu * grid[b].norm(dim=-1).median()  # half the median norm, all along ν
    gated, plain = DefectRule(norm_gate=2.0), DefectRule(norm_gate=0.0)
    assert plain.detect(grid, nu).sum() == 3 and gated.detect(grid, nu).sum() == 0

    def summary_of(rule, grid):
        stats, rejected = DefectStats(), GateRejectedStats()
        found = detect_layer(rule, grid, nu)
        stats.add(grid, nu, found)
        rejected.add(grid, found)
        return {"rule": rule.to_dict(), "layers": [{**stats.summary(nu), **rejected.summary(nu)}]}

    summary = summary_of(gated, grid)
    last = summary["layers"][0]
    assert last["gate_rejected_rate"] == pytest.approx(3 / 288) and last["gate_rejected_images"] == 2
    assert last["gate_rejected_cos_median"] == pytest.approx(1.0) and last["gate_rejected_alignment"] == pytest.approx(1.0)
    assert last["gate_rejected_norm_over_neighbours"] < 0.6
    assert "--low-norm count" in gate_warning(summary)  # an undecided rule dropped them
    counting = choose_low_norm(gated, [{"index": 0, **last}])
    assert (counting.low_norm, counting.low_norm_from) == ("count", 0)
    assert counting.detect(grid, nu, layer=0).sum() == 3 and replace(counting, low_norm_from=1).detect(grid, nu, layer=0).sum() == 0
    counted = summary_of(counting, grid)
    assert counted["layers"][0]["defect_rate"] == pytest.approx(3 / 288) and "counted as defects from block 0" in gate_warning(counted)
    assert gate_warning(summary_of(plain, grid)) is None  # no gate, nothing rejected
    # the same count of gate-rejected tokens, but only the rule's noise tail (no artifact): silent
    nu = torch.zeros(384)
    nu[0] = 1.0
    noisy = summary_of(gated, torch.randn(4, 37, 37, 384, generator=g))  # a ViT-S width: |cos| tail ~0.17
    assert noisy["layers"][0]["gate_rejected_rate"] > 0 and gate_warning(noisy) is None
    assert choose_low_norm(gated, noisy["layers"]).low_norm == "drop"
