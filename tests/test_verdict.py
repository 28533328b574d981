"""The per-model verdict and the low-norm warning (sinder.verdict): "no singular defects" and no
warning on random-init models of every family, the right onset block on the zoo, a warning that
fires on low-norm artifacts, and the verdict as the last line of `sinder analyze`."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from sinder.analyze import AnalyzeConfig, analyze, compute_directions
from sinder.backbones import load_backbone
from sinder.backbones.timm_loader import wrap_timm
from sinder.cli import main
from sinder.detect import DefectRule
from sinder.images import bundled_photos
from sinder.planted import PRESETS
from sinder.verdict import compute_verdict, gate_warning, layer_defects

PHOTOS = ("chelsea", "coffee", "astronaut", "brick")
VERDICT_KEYS = {"has_defects", "onset_layer", "defect_rate", "max_over_median", "direction_consistency_deg", "reason"}


def run_analysis(backbone, photos=PHOTOS, resolution=None):
    directions, values = compute_directions(backbone, "exact")
    cfg = AnalyzeConfig(figures=False, resolution=resolution, progress=False)
    result = analyze(backbone, bundled_photos(photos), cfg, directions=directions, singular_values=values)
    return result.summary, directions


# ----------------------------------------------------------------------------- the rule on its own


def _layer(**kw) -> dict:
    base = {
        "index": 0,
        "defect_rate": 0.0,
        "high_norm_rate": 0.0,
        "gate_rejected_rate": 0.0,
        "max_over_median": 1.5,
        "defect_precision": None,
        "theory_alignment": None,
        "direction_consistency_deg": None,
        "direction_consistency_images": 0,
    }
    return {**base, **kw}


def test_rule_reads_alignment_and_the_gate_rejected_tokens():
    high = dict(
        defect_rate=0.02,
        high_norm_rate=0.02,
        defect_precision=1.0,
        max_over_median=9.4,
        theory_alignment=0.99,
        direction_consistency_deg=2.6,
        direction_consistency_images=8,
    )
    assert layer_defects(_layer(**high)) == "high-norm"
    assert layer_defects(_layer(**{**high, "theory_alignment": 0.12})) is None  # high-norm tokens that are not along ν
    assert layer_defects(_layer(**{**high, "defect_precision": None})) is None  # nothing flagged
    low = dict(
        gate_rejected_rate=0.02,
        gate_rejected_cos_median=0.74,
        gate_rejected_alignment=0.88,
        gate_rejected_images=8,
        gate_rejected_norm_over_neighbours=0.68,
    )
    assert layer_defects(_layer(**low)) == "low-norm"
    assert layer_defects(_layer(**{**low, "gate_rejected_cos_median": 0.3})) is None  # the noise tail
    assert layer_defects(_layer(**{**low, "gate_rejected_alignment": 0.4})) is None  # no common direction
    assert layer_defects(_layer(**{**low, "defect_rate": 0.03})) is None  # fewer than the defects found
    layers = [_layer(index=i) for i in range(4)] + [_layer(index=i, **high) for i in range(4, 12)]
    v = compute_verdict({"layers": layers})
    assert VERDICT_KEYS <= set(v) and v["has_defects"] and v["onset_layer"] == 4
    assert v["reason"] == "singular defects from block 4: 2.00% of tokens, max/median norm 9.4, one direction (2.6° between 8 images)"
    v = compute_verdict({"layers": [_layer(index=i) for i in range(12)]})
    assert not v["has_defects"] and v["onset_layer"] is None
    assert v["reason"] == "no singular defects: max/median 1.5, nothing aligned with ν above the noise tail"
    # an analysis.json written before the gate-rejected statistics: no warning, a verdict all the same
    assert gate_warning({"layers": [_layer(gate_rejected_rate=0.05)]}) is None


# ----------------------------------------------------------------------------- defect-free models


def _timm(name: str, img_size: int, **kw):
    model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, img_size=img_size, depth=4, **kw)
    return wrap_timm(model.eval(), f"timm:{name}")


def _hf(kind: str, folder):
    import transformers
    from transformers import (
        CLIPVisionConfig,
        Dinov2Config,
        Dinov2WithRegistersConfig,
        DINOv3ViTConfig,
        Siglip2VisionConfig,
        SiglipVisionConfig,
    )

    common = dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1536)
    cfg = {
        "dinov2": lambda: Dinov2Config(image_size=112, patch_size=14, **common),
        "dinov2_reg": lambda: Dinov2WithRegistersConfig(image_size=112, patch_size=14, **common),
        "dinov3": lambda: DINOv3ViTConfig(image_size=112, patch_size=16, num_register_tokens=4, **common),
        "clip": lambda: CLIPVisionConfig(image_size=112, patch_size=16, hidden_act="quick_gelu", **common),
        "siglip": lambda: SiglipVisionConfig(image_size=112, patch_size=16, **common),
        "siglip2": lambda: Siglip2VisionConfig(num_patches=49, patch_size=16, **common),  # 7×7 patches = 112 px
    }[kind]()
    torch.manual_seed(0)
    getattr(transformers, type(cfg).__name__.replace("Config", "Model"))(cfg).save_pretrained(folder)
    return load_backbone(f"hf:{folder}")


# Full width (the noise tail of |cos| depends on it), 4 blocks, 112 px: random init, every family.
RANDOM = {
    "timm_dinov2": lambda tmp: _timm("vit_small_patch14_dinov2", 112),
    "timm_dinov2_reg4": lambda tmp: _timm("vit_small_patch14_reg4_dinov2", 112),
    "timm_dinov3_qkvb": lambda tmp: _timm("vit_small_patch16_dinov3_qkvb", 112),
    "timm_clip": lambda tmp: _timm("vit_base_patch16_clip_224.openai", 112),
    "timm_deit3": lambda tmp: _timm("deit3_small_patch16_224", 112),
    "hf_dinov2": lambda tmp: _hf("dinov2", tmp / "hf"),
    "hf_dinov2_reg": lambda tmp: _hf("dinov2_reg", tmp / "hf"),
    "hf_dinov3": lambda tmp: _hf("dinov3", tmp / "hf"),
    "hf_clip": lambda tmp: _hf("clip", tmp / "hf"),
    "hf_siglip": lambda tmp: _hf("siglip", tmp / "hf"),
    "hf_siglip2": lambda tmp: _hf("siglip2", tmp / "hf"),
}


@pytest.mark.parametrize("case", list(RANDOM))
def test_random_init_models_have_no_singular_defects_and_no_warning(case, tmp_path):
    torch.manual_seed(0)
    summary, _ = run_analysis(RANDOM[case](tmp_path))
    v = summary["verdict"]
    assert not v["has_defects"] and v["onset_layer"] is None and not v["low_norm_artifacts"], v
    assert v["reason"].startswith("no singular defects: max/median ") and v["reason"].endswith(
        "nothing aligned with ν above the noise tail"
    )
    assert gate_warning(summary) is None
    assert all(layer_defects(layer) is None for layer in summary["layers"])


# ----------------------------------------------------------------------------- the zoo


def expected_onset(backbone, directions) -> int:
    """The ground truth's onset: the first block from the ignition on whose predicted ν_i is the
    planted u (the ignition block itself unless the amplifier only starts later, as in reg4 and
    spectral, where the theory first sees u 1–3 blocks after the ignition)."""
    truth = backbone.ground_truth
    u = truth.u.float()
    return next(
        i for i in range(truth.ignition_layer, backbone.depth) if abs(float(F.cosine_similarity(directions[i].float(), u, dim=0))) >= 0.9
    )


# marker and content ignition, the onset one and three blocks after the ignition, defects on the
# border, and low-norm artifacts (the members other than these take 3–25 s each; all pass, docs/benchmarks.md;
# hf_dinov2, hf_siglip and open_clip give their twins' tokens, tests/test_planted.py and tests/test_open_clip.py)
ZOO = ("small", "reg4", "spectral", "late", "border", "lownorm", "clip", "siglip", "dinov3")


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_members_have_defects_from_the_right_block(name):
    if name not in PRESETS:
        pytest.skip(f"planted:{name} is not in this zoo")
    backbone = load_backbone(f"planted:{name}")
    summary, directions = run_analysis(backbone)
    v = summary["verdict"]
    assert v["has_defects"] and v["onset_layer"] == expected_onset(backbone, directions), v
    assert v["onset_layer"] >= backbone.ground_truth.ignition_layer
    last = summary["layers"][-1]
    if name == "lownorm":  # CLIP-like: along ν at a lower norm than the neighbours; the gate would drop them
        assert v["last_layer_defects"] == "low-norm" and v["low_norm_artifacts"] and v["low_norm_counted"]
        assert summary["rule"]["low_norm"] == "count" and summary["rule"]["low_norm_from"] == v["onset_layer"]
        assert v["reason"].startswith(f"low-norm singular defects from block {v['onset_layer']}: ") and "counted" in v["reason"]
        assert f"counted as defects from block {v['onset_layer']}" in gate_warning(summary)
    else:
        assert summary["rule"]["low_norm"] == "drop"
        assert v["last_layer_defects"] == "high-norm" and gate_warning(summary) is None
        assert v["reason"].startswith(f"singular defects from block {v['onset_layer']}: ")
    assert last["truth_recall"] >= 0.95 and last["truth_precision"] >= 0.95, last


def test_warning_fires_on_artifacts_of_lower_norm_than_their_neighbours():
    """planted:small with its last block's defect tokens scaled down to half the median norm."""
    backbone = load_backbone("planted:small")
    u, prefix = backbone.ground_truth.u, backbone.num_prefix_tokens

    def low_norm(module, inputs, out):
        patches = out[:, prefix:]
        norms = patches.norm(dim=-1, keepdim=True)
        along = (F.normalize(patches, dim=-1) @ u.to(out)).abs()[..., None] > 0.5
        scaled = torch.where(along, patches / norms * 0.5 * norms.median(dim=1, keepdim=True).values, patches)
        return torch.cat([out[:, :prefix], scaled], dim=1)

    backbone.model.blocks[-1].register_forward_hook(low_norm)
    summary, _ = run_analysis(backbone, PHOTOS[:2])
    last = summary["layers"][-1]
    # low_norm "auto": counted from the last block, the only one where they are low-norm
    assert summary["rule"]["low_norm"] == "count" and summary["rule"]["low_norm_from"] == backbone.depth - 1
    assert last["defect_rate"] == pytest.approx(last["gate_rejected_rate"]) and last["defect_rate"] > 0
    assert last["gate_rejected_cos_median"] > 0.9 and last["gate_rejected_norm_over_neighbours"] < 0.7
    assert summary["layers"][-2]["gate_rejected_rate"] == 0  # high-norm one block earlier
    warning = gate_warning(summary)
    assert warning and f"counted as defects from block {backbone.depth - 1}" in warning
    ratio = float(re.search(r"(\d\.\d+)× their neighbours' norm", warning).group(1))
    assert 0.4 <= ratio <= 0.6  # scaled to half the median: about half their neighbours' norm
    v = summary["verdict"]
    assert v["has_defects"] and v["onset_layer"] == 4 and v["last_layer_defects"] == "low-norm" and v["low_norm_counted"]
    assert v["reason"].startswith("singular defects from block 4, low-norm in the last block: ")
    # told to drop them, the rule leaves them out, and the line says how to count them
    directions, values = compute_directions(backbone, "exact")
    cfg = AnalyzeConfig(figures=False, progress=False, rule=DefectRule(low_norm="drop"))
    dropped = analyze(backbone, bundled_photos(PHOTOS[:2]), cfg, directions=directions, singular_values=values).summary
    assert dropped["layers"][-1]["defect_rate"] == 0 and dropped["layers"][-1]["gate_rejected_rate"] == last["gate_rejected_rate"]
    assert "--low-norm count" in gate_warning(dropped) and not dropped["verdict"]["low_norm_counted"]
    assert dropped["verdict"]["last_layer_defects"] == "low-norm"


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "argv, last_line",
    [
        (["planted:small"], "verdict: singular defects from block 4: "),
        (["timm:deit3_small_patch16_224", "--random-init"], "verdict: no singular defects: max/median "),
    ],
)
def test_analyze_prints_the_verdict_last(argv, last_line, photo_dir, tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["analyze", argv[0], str(photo_dir), "--out", str(out), "--no-figures", *argv[1:]]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith(last_line), printed[-1]
    assert not any(line.startswith("warning:") for line in printed)
    verdict = json.loads((out / "analysis.json").read_text())["verdict"]
    assert VERDICT_KEYS <= set(verdict) and printed[-1] == f"verdict: {verdict['reason']}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2", "open_clip"])
def test_sinder_analyze_reads_random_init_towers(kind, photo_dir, tmp_path, capsys):
    """`sinder analyze` on a random-init CLIP, SigLIP or SigLIP2 folder written by save_pretrained,
    and on an open_clip model: it runs, and its last line is the verdict (no defects there)."""
    if kind == "open_clip":
        spec, extra = "open_clip:ViT-B-32", ["--random-init"]
    else:
        _hf(kind, tmp_path / "hf")
        spec, extra = f"hf:{tmp_path / 'hf'}", []
    assert main(["analyze", spec, str(photo_dir), "--out", str(tmp_path / "an"), "--no-figures", *extra]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("verdict: no singular defects"), last
