"""Bring your own module: a timm or transformers model built in Python (any img_size, no
dynamic_img_size) goes straight into analyze, repair and evaluate; repair edits it in place and it
keeps its class, its state-dict keys and its fixed-size settings."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers.towers import tower_model

from sinder.analyze import AnalyzeConfig, analyze
from sinder.backbones import as_backbone, load_backbone
from sinder.errors import ModelSpecError
from sinder.evaluate import EvaluateConfig, evaluate
from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN, bundled_photos
from sinder.repair import RepairConfig, repair


def planted_in_a_plain_timm_model() -> torch.nn.Module:
    """What a user has: timm's own constructor at 224 px (fixed size), with weights loaded into it."""
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)
    model.load_state_dict(load_backbone("planted:small").model.state_dict(), strict=True)
    assert not model.dynamic_img_size
    return model


@pytest.mark.slow
def test_a_fixed_size_timm_module_is_analysed_at_another_size_and_repaired_in_place(tmp_path):
    model = planted_in_a_plain_timm_model()
    keys, cls = list(model.state_dict()), type(model)
    # 280 px: a 20×20 grid where the model was built for 16×16 (timm alone refuses that input)
    summary = analyze(model, bundled_photos(BUNDLED_EVAL[:2]), AnalyzeConfig(resolution=280, figures=False, progress=False)).summary
    assert summary["verdict"]["has_defects"] and summary["images"][0]["grid"] == [20, 20]
    with pytest.raises(AssertionError):  # the module itself is still the fixed-size model the user built
        model.forward_features(torch.zeros(1, 3, 280, 280))
    result = repair(
        model,
        bundled_photos(BUNDLED_TRAIN),
        RepairConfig(max_steps=200, progress=False),
        eval_images=bundled_photos(BUNDLED_EVAL[:3]),
        out_dir=tmp_path / "run",
    )
    assert type(model) is cls and list(model.state_dict()) == keys and not model.dynamic_img_size
    before, after = result.summary["metrics"]["before"], result.summary["metrics"]["after"]
    assert before["energy_along_direction"] > 0.3 and after["energy_along_direction"] < 0.01
    assert result.summary["metrics"]["features"]["non_defect_cosine"] > 0.999
    assert (tmp_path / "run" / "weights" / "model.safetensors").is_file()  # exported as timm and re-loaded
    # the edited module is the repaired one: a fresh analysis of it finds no defects
    again = analyze(model, bundled_photos(BUNDLED_EVAL[:2]), AnalyzeConfig(figures=False, progress=False)).summary
    assert again["layers"][-1]["energy_along_direction"] < 0.01


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2"])
def test_a_transformers_module_goes_through_analyze_repair_and_evaluate(kind, tmp_path):
    model = tower_model(kind, image_size=112)
    keys, cls = list(model.state_dict()), type(model)
    photos = bundled_photos(BUNDLED_TRAIN[:3])
    summary = analyze(model, photos, AnalyzeConfig(figures=False, progress=False)).summary
    assert len(summary["layers"]) == 2 and summary["num_prefix_tokens"] == (1 if kind == "clip" else 0)
    result = repair(
        model, photos, RepairConfig(max_steps=2, progress=False), eval_images=bundled_photos(BUNDLED_EVAL[:2]), out_dir=tmp_path / "run"
    )
    assert type(model) is cls and list(model.state_dict()) == keys
    assert ("cls_cosine" if kind == "clip" else "pooled_cosine") in result.summary["metrics"]["features"]
    assert (tmp_path / "run" / "weights" / "config.json").is_file()  # save_pretrained, re-loaded by the export check
    metrics = evaluate(model, "intrinsic", _folder(tmp_path), EvaluateConfig(progress=False))
    assert metrics["max_over_median"] >= 1


def _folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for item in bundled_photos(BUNDLED_EVAL[:2]):
        item.image.save(folder / f"{item.name.split(':')[-1]}.png")
    return folder


def test_other_modules_are_refused_in_one_line():
    with pytest.raises(ModelSpecError, match="is not a model sinder can adapt") as err:
        as_backbone(torch.nn.Linear(2, 2))
    assert "\n" not in str(err.value)
    with pytest.raises(ModelSpecError, match="already has its weights"):
        load_backbone(tower_model("clip"), weights="w.safetensors")


def test_compare_runs_every_fix_on_a_siglip_module_and_reports_its_pooled_cosine(tmp_path):
    """No CLS token: the attention-pooling head's output is compared instead."""
    from sinder.compare import CompareConfig, compare, format_table
    from sinder.fixes import ClampFix, InterpolationFix, RegisterSearchConfig, RegistersFix, SinderFix

    model = tower_model("siglip", image_size=112)
    fixes = (SinderFix(repair=RepairConfig(max_steps=2, progress=False)), RegistersFix(search=RegisterSearchConfig(threshold=1.0)))
    config = CompareConfig(fixes=(*fixes, ClampFix(), InterpolationFix()))
    report = compare(model, bundled_photos(BUNDLED_TRAIN[:3]), bundled_photos(BUNDLED_EVAL[:2]), config, out_dir=tmp_path / "cmp")
    assert report["order"] == ["original", "sinder", "registers", "clamp", "interp"]
    for name in report["order"][1:]:
        assert 0.5 < report["methods"][name]["features"]["pooled_cosine"] <= 1.0 + 1e-6, name
    lines = format_table(report).splitlines()
    assert "CLS/pooled cos" in lines[0]
    sinder_row = next(line for line in lines if line.startswith("sinder"))
    assert f"{report['methods']['sinder']['features']['pooled_cosine']:.4f}" in sinder_row
