"""The planted-defect model really has singular defects, measured on natural photos."""

import math
import os

import pytest
import torch
from helpers.fingerprint import fingerprint, mismatches, read_pins
from helpers.repair import repaired_to_zoo_targets

from sinder.analyze import AnalyzeConfig, analyze
from sinder.detect import DefectRule
from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN, bundled_photos
from sinder.planted import PRESETS, PlantedConfig, build_planted

PHOTOS = BUNDLED_TRAIN[:4] + BUNDLED_EVAL[:4]


@pytest.fixture(scope="module")
def result(planted, planted_directions):
    # high_norm_factor 5: the "norm ≥ 5× the median" tokens; the default square crops keep
    # the native 16×16 grid (other grids resample the positional embedding and smear the markers).
    cfg = AnalyzeConfig(rule=DefectRule(high_norm_factor=5.0), figures=False, progress=False)
    return analyze(planted, bundled_photos(PHOTOS), cfg, directions=planted_directions)


@pytest.mark.slow
def test_build_is_deterministic_and_seeded():
    a, info_a = build_planted(PlantedConfig())
    b, _ = build_planted(PlantedConfig())
    c, info_c = build_planted(PlantedConfig(seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], sc["blocks.0.attn.qkv.weight"])
    assert info_a.positions != info_c.positions


def test_layout_is_timm_dinov2_small(planted):
    import timm

    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)
    assert planted.model.state_dict().keys() == ref.state_dict().keys()
    assert planted.image_size == 224 and planted.depth == 12 and planted.embed_dim == 384


def test_last_layer_has_one_to_five_percent_high_norm_tokens(result):
    for img in result.summary["images"]:
        h, w = img["grid"]
        rate = img["high_norm_last_layer"] / (h * w)
        assert 0.01 <= rate <= 0.05, (img["path"], rate)


def test_theory_aligns_from_the_layer_after_the_planted_one(result, planted):
    planted_layer = planted.ground_truth.ignition_layer
    for layer in result.summary["layers"][planted_layer + 1 :]:
        assert layer["theory_alignment"] >= 0.95, layer
    # Before the planted layer there is nothing to predict: no high-norm tokens.
    for layer in result.summary["layers"][:planted_layer]:
        assert layer["high_norm_rate"] == 0.0


def test_detection_recall_and_precision_at_last_layer(result):
    last = result.summary["layers"][-1]
    assert last["high_norm_recall"] >= 0.9
    assert last["defect_precision"] >= 0.8


def test_per_image_defect_directions_agree(result):
    assert result.summary["direction_consistency_deg"] is not None
    assert result.summary["direction_consistency_deg"] <= 10.0


def test_predicted_direction_is_the_planted_one(planted, planted_directions):
    u = planted.ground_truth.u
    last = planted_directions[-1]
    assert abs(float(torch.dot(last, u))) > 0.99
    assert math.isclose(float(last.norm()), 1.0, rel_tol=1e-5)


# -- the zoo ------------------------------------------------------------------------------------
ZOO_PHOTOS = ("rocket", "coffee", "camera", "astronaut")  # training photos: flat sky and textured scenes


@pytest.mark.parametrize(
    "name",
    ["content", "early", "late", "noisy", "native518", "swiglu", "reg4", "spectral", "spread", "attention", "border", "crowded", "lownorm"]
    + ["hf_dinov2", "clip", "open_clip", "siglip", "hf_siglip", "hf_siglip2", "dinov3"],
)
@pytest.mark.slow
def test_zoo_member_has_real_singular_defects(name):
    """Built from a seed in seconds, with its ground truth: the planted u ignites on some tokens,
    is amplified to high norm by the last layer (``lownorm``: stays below the median norm), and
    the theory predicts it."""
    import time

    from sinder.backbones import load_backbone
    from sinder.detect import DefectRule, DefectStats, detect_layer
    from sinder.images import ImageSet
    from sinder.theory import defect_directions

    t0 = time.perf_counter()
    bb = load_backbone(f"planted:{name}")
    assert time.perf_counter() - t0 < 30
    assert_unchanged(name, bb.model)  # other members' config fields leave this one as pinned
    truth = bb.ground_truth
    nu = defect_directions(bb)[-1]
    assert abs(float(nu @ truth.u)) > 0.95
    images = ImageSet.from_inputs(bundled_photos(ZOO_PHOTOS), bb, bb.image_size)
    stats, ignited, planted = DefectStats(), [], []
    with torch.no_grad():
        for _, px in images.batches(4):
            truth_cells = truth.ignition(bb, px)
            ignited += truth_cells.flatten(1).sum(dim=1).tolist()
            outs, ctx = bb.forward_layers(px)
            grid = bb.patch_grid(outs[-1], ctx)
            found = detect_layer(DefectRule(norm_gate=2.0), grid, nu)
            stats.add(grid, truth.u, found)
            relative = found.norms / found.norms.flatten(1).median(dim=1).values[:, None, None]
            planted += [(t, r, f, c) for t, r, f, c in zip(truth_cells, relative, found.gate_rejected, found.scores)]
    s = stats.summary()
    assert sum(ignited) > 0
    if truth.config.ignition_suppress:  # CLIP-like: aligned with ν but below the median norm
        assert s["high_norm_rate"] == 0 and s["max_over_median"] < 2, s
        for cells, rel, rejected, cos in planted:
            assert rel[cells].max() < 0.9 and cos[cells].min() > 10 * cos[~cells].max(), (rel[cells], cos[cells])
            assert rejected[cells].all()  # the |cos| part finds them, the norm gate rejects them
    else:
        assert 0.003 <= s["high_norm_rate"] <= 0.05, (ignited, s["high_norm_rate"])
        assert s["max_over_median"] > 4 and s["energy_along_direction"] > 0.2
    if truth.config.ignition == "content":  # positions and counts follow the content
        assert len(set(ignited)) > 1
    else:
        assert set(ignited) == {len(truth.positions)}
    if truth.config.marker_layout == "border":
        last = truth.grid - 1
        corners = {(0, 0), (0, last), (last, 0), (last, last)}
        edges = [(r, c) for r, c in truth.positions if (r in (0, last) or c in (0, last)) and (r, c) not in corners]
        assert corners <= set(truth.positions) and len(edges) >= 2
        assert any(0 < r < last and 0 < c < last for r, c in truth.positions)
    if truth.config.marker_layout == "clusters":  # 15–40 per image, some in one another's 3×3 window, ≥ 2× apart in norm
        assert 15 <= min(ignited) and max(ignited) <= 40
        cells = set(truth.positions)
        assert sum(any((r + dr, c + dc) in cells for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc) for r, c in cells) >= 5
        ratios = [float(rel[t].max() / rel[t].min()) for t, rel, _, _ in planted]
        assert min(ratios) > 2 and max(ratios) < 6, ratios


# Every member's weights are pinned by a fingerprint that holds across CPUs, BLAS kernels and
# thread counts (tests/helpers/fingerprint.py): a new config field must leave the others unchanged.
# A torch or timm upgrade may change timm's random init: re-pin then.
def _pins() -> dict | None:
    """The pinned fingerprints, or None when they were pinned under other torch/timm versions."""
    import timm

    pins = read_pins()
    same = (torch.__version__.split("+")[0], timm.__version__) == (pins["torch"], pins["timm"])
    return pins["members"] if same else None


def _pins_or_skip() -> dict:
    pins = _pins()
    if pins is None:
        pytest.skip(f"fingerprints pinned under torch {read_pins()['torch']}, timm {read_pins()['timm']}")
    return pins


def assert_unchanged(name: str, model: torch.nn.Module) -> None:
    """``model`` is planted:NAME as pinned (checked only under the pinning versions; the
    dedicated tests below say so when they skip)."""
    pinned = _pins()
    if pinned is None:
        return
    assert name in pinned, f"planted:{name} has no pinned fingerprint: run tests/helpers/fingerprint.py"
    bad = mismatches(fingerprint(model.state_dict()), pinned[name])
    assert not bad, bad[:5]


def test_default_member_is_unchanged(planted):
    assert set(_pins_or_skip()) == set(PRESETS), "pin every member: run tests/helpers/fingerprint.py"
    assert_unchanged("small", planted.model)


@pytest.mark.slow
def test_fingerprint_ignores_float_noise_and_catches_real_changes():
    """Float32 rounding noise (what another CPU's kernels give) passes; a change of a config
    field, or a 1e-4 relative edit of one tensor, fails."""
    from dataclasses import replace

    pinned = _pins_or_skip()["small"]
    model, _ = build_planted(PRESETS["small"])
    state = model.state_dict()
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v * (1 + 6e-8 * torch.randn(v.shape, generator=gen)) for k, v in state.items()}
    assert mismatches(fingerprint(noisy), pinned) == []
    edited = dict(
        state,
        **{
            "blocks.3.mlp.fc1.weight": state["blocks.3.mlp.fc1.weight"]
            * (1 + 1e-4 * torch.randn(state["blocks.3.mlp.fc1.weight"].shape, generator=gen))
        },
    )
    assert [line.split(":")[0] for line in mismatches(fingerprint(edited), pinned)] == ["blocks.3.mlp.fc1.weight"]
    changed, _ = build_planted(replace(PRESETS["small"], marker_norm=PRESETS["small"].marker_norm * 1.01))
    assert any(line.startswith("pos_embed") for line in mismatches(fingerprint(changed.state_dict()), pinned))


@pytest.mark.slow
def test_build_matches_its_pin_under_other_cpu_kernels():
    """ATen's portable kernels (ATEN_CPU_CAPABILITY=default) stand in for another CPU model: its
    float32 build differs in the last bits from the vectorised one, and the fingerprint holds."""
    import subprocess
    import sys
    from pathlib import Path

    _pins_or_skip()
    code = (
        "from helpers.fingerprint import fingerprint, mismatches, read_pins;"
        "from sinder.planted import PRESETS, build_planted;"
        "m, _ = build_planted(PRESETS['noisy']);"
        "print(mismatches(fingerprint(m.state_dict()), read_pins()['members']['noisy']))"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


@pytest.fixture(scope="module")
def spectral():
    from sinder.backbones import load_backbone

    return load_backbone("planted:spectral")


@torch.no_grad()
def test_spectral_member_has_trained_looking_spectra_with_the_circuit_among_them(spectral):
    """Every block Linear has many σ > 2 (timm's init: all < 1.3), and no planted weight stands
    far above them, so a σ clamp at the paper's γ cuts both."""
    from sinder.planted.circuits import ordinary_linears

    truth = spectral.ground_truth
    for weight in ordinary_linears(spectral.model):
        s = torch.linalg.svdvals(weight.double())
        assert (s > 2).sum() >= 10 and s[0] < 9, s[:3]
    for i, blk in enumerate(spectral.model.blocks[truth.ignition_layer :], truth.ignition_layer):
        assert 1.5 < float((blk.mlp.fc2.weight.T @ truth.u).norm()) < 5, i  # what writes u (all units)
        if i > truth.ignition_layer:
            assert 1.5 < float((blk.mlp.fc1.weight @ truth.u).norm()) < 5, i  # what reads it (the amplifier)


@pytest.mark.slow
@torch.no_grad()
def test_clamping_the_spectral_member_trades_defect_for_features(spectral):
    """SINDER appendix B's trade-off, which the other members lack: γ = 3 leaves part of the defect
    and already moves ordinary tokens; γ = 1.3 removes it and moves them more."""
    import copy

    import torch.nn.functional as F

    from sinder.fixes import clamp_singular_values
    from sinder.images import ImageSet

    images = ImageSet.from_inputs(bundled_photos(ZOO_PHOTOS), spectral, spectral.image_size)
    _, px = next(iter(images.batches(len(ZOO_PHOTOS))))
    u, ordinary = spectral.ground_truth.u, ~spectral.ground_truth.ignition(spectral, px)

    def last_layer(bb):  # energy along u, final-normed patch tokens
        outs, ctx = bb.forward_layers(px)
        grid = bb.patch_grid(outs[-1], ctx)
        return float((grid @ u).square().sum() / grid.square().sum()), bb.patch_grid(bb.final_norm(outs[-1]), ctx)

    energy, tokens = last_layer(spectral)
    left, cos = {}, {}
    for gamma in (3.0, 1.3):
        bb = copy.deepcopy(spectral)
        clamp_singular_values(bb, gamma)
        e, t = last_layer(bb)
        left[gamma], cos[gamma] = e / energy, float(F.cosine_similarity(tokens, t, dim=-1)[ordinary].mean())
    assert energy > 0.4 and 0.3 < left[3.0] < 0.95 and left[1.3] < 0.02, (energy, left)
    assert cos[1.3] < cos[3.0] < 0.995 and cos[1.3] < 0.99, cos


def test_marker_layouts_and_new_fields_are_checked():
    """``border`` and ``clusters`` place the cells they promise, every seed; the new fields refuse
    what they cannot build."""
    from sinder.errors import ConfigError
    from sinder.planted.circuits import border_positions, clustered_positions

    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        cells = border_positions(16, 10, gen)
        assert len(set(cells)) == 10 and {(0, 0), (0, 15), (15, 0), (15, 15)} <= set(cells)
        assert sum(min(r, c) == 0 or max(r, c) == 15 for r, c in cells) == 8
        cells = clustered_positions(37, 30, gen)
        assert len(set(cells)) == 30 and all(1 <= min(rc) and max(rc) <= 35 for rc in cells)
        assert any(max(abs(r - r2), abs(c - c2)) == 1 for r, c in cells for r2, c2 in cells)
    with pytest.raises(ConfigError, match="marker_layout='border' needs markers >= 6"):
        PlantedConfig(marker_layout="border", markers=5)
    with pytest.raises(ConfigError, match="ignition_suppress needs one MLP ignition unit"):
        PlantedConfig(ignition="content", ignition_suppress=1.0)
    with pytest.raises(ConfigError, match="amplifier must be pair, feedback or bounded"):
        PlantedConfig(amplifier="nope")
    with pytest.raises(ConfigError, match="layout must be dinov2, hf_dinov2, clip, open_clip, siglip, hf_siglip, hf_siglip2, dinov3"):
        PlantedConfig(layout="eva")
    with pytest.raises(ConfigError, match="multiple of 16"):
        PlantedConfig(layout="dinov3", registers=True, img_size=224 + 14)
    with pytest.raises(ConfigError, match="plain-MLP DINOv3 of size S, B, L"):
        PlantedConfig(layout="dinov3", size="g")
    with pytest.raises(ConfigError, match="ViT-g's MLP is SwiGLU"):
        PlantedConfig(layout="open_clip", size="g")
    with pytest.raises(ConfigError, match="no CLS token"):
        PlantedConfig(layout="siglip", ignition_path="attention")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip", "siglip", "dinov3"])
def test_converted_layouts_are_the_towers_they_name(name, tmp_path):
    """``clip`` is a transformers ``CLIPVisionModel`` (a LayerNorm before the blocks, QuickGELU, CLS,
    no LayerScale), ``siglip`` a timm model in SigLIP's layout (tanh-GELU, no CLS, an
    attention-pool head whose output is the summary the metrics compare) and ``dinov3`` timm's Eva
    in DINOv3's (RoPE, patch 16, CLS + 4 registers, LayerScale). Each is rebuilt by its own library
    from what sinder records, with the same tokens."""
    import timm

    from sinder.backbones import load_backbone
    from sinder.measure import forward_tokens, summary_token_name

    bb = load_backbone(f"planted:{name}")
    model, cfg = bb.model, bb.ground_truth.config
    assert (bb.block_view(0).ls1 is not None) == (name == "dinov3")  # LayerScale in DINOv3 only
    if name == "dinov3":
        assert type(model).__name__ == "Eva" and model.rope is not None and bb.patch_size == 16 and bb.num_prefix_tokens == 5
        assert summary_token_name(bb) == "cls_cosine"
        again = timm.create_model(cfg.timm_name, pretrained=False, num_classes=0, img_size=cfg.img_size, **cfg.timm_kwargs)
        again.load_state_dict(model.state_dict(), strict=True)
        rebuilt = load_backbone(again)
    elif name == "clip":
        from transformers import CLIPVisionModel

        assert type(model).__name__ == "CLIPVisionModel" and model.config.hidden_act == "quick_gelu"
        assert bb.has_cls_token and summary_token_name(bb) == "cls_cosine"
        model.save_pretrained(tmp_path)
        rebuilt = load_backbone(CLIPVisionModel.from_pretrained(tmp_path))
    else:
        assert type(model.blocks[0].mlp.act).__name__ == "GELUTanh" and model.cls_token is None and model.global_pool == "map"
        assert not bb.has_cls_token and bb.num_prefix_tokens == 0 and summary_token_name(bb) == "pooled_cosine"
        again = timm.create_model(cfg.timm_name, pretrained=False, num_classes=0, img_size=cfg.img_size, **cfg.timm_kwargs)
        again.load_state_dict(model.state_dict(), strict=True)
        rebuilt = load_backbone(again)
    px = torch.rand(2, 3, cfg.img_size, cfg.img_size)
    a, b = forward_tokens(bb, px), forward_tokens(rebuilt, px)
    assert torch.allclose(a.final, b.final, atol=1e-5) and torch.allclose(a.last, b.last, atol=1e-4)


def test_clip_member_is_the_timm_build_in_transformers():
    """The key map behind the CLIP member: a timm CLIP-layout ViT and the transformers tower it
    maps to give the same tokens on the same normalised pixels (the member also moves the input
    normalisation into its weights, checked on photos by the zoo test)."""
    import timm
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from sinder.backbones.convert import timm_clip_to_hf_clip
    from sinder.backbones.hf_tower import vision_tower

    torch.manual_seed(0)
    t = timm.create_model(
        "vit_small_patch14_dinov2",
        pretrained=False,
        num_classes=0,
        img_size=56,
        depth=2,
        pre_norm=True,
        act_layer="quick_gelu",
        init_values=0.0,
    ).eval()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = CLIPVisionConfig(
        hidden_size=384, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=6, image_size=56, patch_size=14
    )
    cfg.hidden_act, cfg.layer_norm_eps = "quick_gelu", 1e-6
    hf = CLIPVisionModel(cfg).eval()
    vision_tower(hf).load_state_dict(timm_clip_to_hf_clip(t.state_dict()), strict=True)
    px = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ours, theirs = t.forward_features(px), vision_tower(hf)(pixel_values=px).last_hidden_state
        assert torch.allclose(ours, vision_tower(hf).post_layernorm(theirs), atol=1e-5)


@torch.no_grad()
def test_the_u_noise_reads_the_same_through_layernorm_at_every_width():
    """The circuits' levels live in LayerNorm units, where a fixed component reads larger the wider
    the model (the divisor is the per-channel std). Unscaled, the noise read 1.15× larger at ViT-B
    (measured here; 0.88× scaled) and more at ViT-L, where 16 amplifier blocks grew it into 3× more
    high-norm tokens than were planted (docs/benchmarks.md)."""
    from dataclasses import replace

    from sinder.backbones.timm_vit import TimmViTBackbone
    from sinder.images import preprocess

    spread = {}
    for size in ("S", "B"):
        model, truth = build_planted(replace(PRESETS["content"], size=size))
        bb = TimmViTBackbone(model, "planted:test")
        photos = [preprocess(p.image, 224, 14, bb.mean, bb.std, square=True) for p in bundled_photos(BUNDLED_TRAIN[:2])]
        x, _ = bb.embed(torch.stack(photos))
        read = model.blocks[0].norm1(x)[:, bb.num_prefix_tokens :] @ truth.u
        spread[size] = float(read.std())
    assert 0.8 <= spread["B"] / spread["S"] <= 1.1, spread


def test_zoo_sizes_plant_the_same_circuits():
    from sinder.errors import ModelSpecError
    from sinder.planted import ARCHITECTURES, preset

    cfg = preset("content@B")
    assert cfg.size == "B" and cfg.timm_name == ARCHITECTURES["B"][0] and cfg.ignition == "content"
    assert preset("swiglu").timm_name == "vit_giant_patch14_dinov2" and preset("swiglu").timm_kwargs["embed_dim"] == 384
    with pytest.raises(ModelSpecError, match="unknown size"):
        preset("small@XL")
    with pytest.raises(ModelSpecError, match="unknown planted model"):
        preset("nosuch")


# members that are another member's function in transformers: (member, its timm twin, the transformers class)
TRANSFORMERS_TWINS = [
    ("hf_dinov2", "small", "Dinov2Model"),
    ("hf_siglip", "siglip", "SiglipVisionModel"),
    ("hf_siglip2", "siglip", "Siglip2VisionModel"),
]


@pytest.mark.slow
@pytest.mark.parametrize("member, twin, cls", TRANSFORMERS_TWINS)
def test_a_transformers_member_is_its_timm_twin(member, twin, cls):
    """planted:hf_dinov2 is planted:small's function (the same circuits and seed) as a transformers
    Dinov2Model, through the official key layout; planted:hf_siglip and hf_siglip2 are
    planted:siglip's as a SiglipVisionModel and a Siglip2VisionModel, the attention-pool head included: the same tokens on photos (each normalised
    as its own model expects), the same ignited cells, and transformers' own forward agrees."""
    from sinder.backbones import load_backbone
    from sinder.images import ImageSet
    from sinder.measure import forward_tokens

    hf, timm_member = load_backbone(f"planted:{member}"), load_backbone(f"planted:{twin}")
    assert type(hf.model).__name__ == cls and hf.family == "planted" and hf.num_prefix_tokens == timm_member.num_prefix_tokens
    photos = bundled_photos(BUNDLED_EVAL[:4])
    ours, theirs = (ImageSet.from_inputs(photos, bb, bb.image_size) for bb in (hf, timm_member))
    ignited = 0
    with torch.no_grad():
        for (_, px), (_, px_twin) in zip(ours.batches(4), theirs.batches(4)):
            a, b = forward_tokens(hf, px), forward_tokens(timm_member, px_twin)
            assert (a.final - b.final).abs().max() < 1e-4 and (a.last - b.last).abs().max() < 1e-4 * b.last.abs().max()
            pooled = hf.pooled(a.final, a.ctx)
            assert (pooled - timm_member.pooled(b.final, b.ctx)).abs().max() < 1e-4  # CLS, or SigLIP's head
            cells = hf.ground_truth.ignition(hf, px)
            assert torch.equal(cells, timm_member.ground_truth.ignition(timm_member, px_twin))
            ignited += int(cells.sum())
            assert (hf.model_forward(px) - a.final).abs().max() < 1e-4  # transformers' own forward (SigLIP2: on patches)
            if cls != "Siglip2VisionModel":
                assert (hf.model(pixel_values=px).pooler_output - pooled).abs().max() < 1e-4
    assert ignited > 0


@pytest.mark.slow
@pytest.mark.parametrize("member, twin, cls", TRANSFORMERS_TWINS)
def test_the_default_repair_clears_a_transformers_member_and_transformers_loads_the_export(member, twin, cls, tmp_path):
    """The zoo targets on photos the repair never saw, the v projections train (q and k do not), and
    the export is a save_pretrained folder that transformers' from_pretrained loads, with the same tokens."""
    import transformers

    from sinder.backbones import load_backbone
    from sinder.export import max_token_diff

    bb = load_backbone(f"planted:{member}")
    frozen = {k: v.clone() for k, v in bb.model.state_dict().items() if ".q_proj." in k or ".k_proj." in k}
    assert frozen
    repaired_to_zoo_targets(bb, tmp_path / "run")
    now = bb.model.state_dict()
    assert all(torch.equal(v, now[k]) for k, v in frozen.items())
    folder = tmp_path / "run" / "weights"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    plain = getattr(transformers, cls).from_pretrained(str(folder)).eval()  # nothing from sinder
    x = torch.rand(2, 3, bb.image_size, bb.image_size)
    assert max_token_diff(bb, load_backbone(plain), x) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swiglu", "reg4"])
def test_the_hf_dinov2_layout_carries_swiglu_and_registers(name):
    """The transformers layout of the ViT-g MLP (SwiGLU, as swiglu and every @g) and of a
    4-register model (Dinov2WithRegistersModel): the timm member's tokens exactly, up to float noise."""
    from dataclasses import replace

    from sinder.backbones import load_backbone
    from sinder.backbones.hf_vit import HFViTBackbone
    from sinder.measure import forward_tokens

    model, _ = build_planted(replace(PRESETS[name], layout="hf_dinov2"))
    hf, timm_member = HFViTBackbone(model, f"planted:{name} as hf_dinov2"), load_backbone(f"planted:{name}")
    assert type(model).__name__ == ("Dinov2Model" if name == "swiglu" else "Dinov2WithRegistersModel")
    assert hf.num_prefix_tokens == timm_member.num_prefix_tokens and hf.block_view(0).activation == timm_member.block_view(0).activation
    px = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = forward_tokens(hf, px), forward_tokens(timm_member, px)
    assert (a.final - b.final).abs().max() < 1e-4 and (a.last - b.last).abs().max() < 1e-4 * b.last.abs().max()
