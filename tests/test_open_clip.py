"""open_clip: the ViT image tower of ``open_clip.CLIP`` through the canonical view (its fused
``nn.MultiheadAttention`` in-projection included), repaired in place and exported as a state dict
that ``open_clip.create_model(ARCH)`` loads with ``strict=True``."""

from __future__ import annotations

import pytest
import torch
from helpers.families import view_block
from helpers.repair import repaired_to_zoo_targets

from sinder.backbones import load_backbone
from sinder.detect import DefectRule
from sinder.export import max_token_diff, reload_exported, save_weights
from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN, bundled_photos
from sinder.repair import RepairConfig, repair

open_clip = pytest.importorskip("open_clip", reason="open-clip-torch is an optional extra (in the dev extras)")


def tiny_clip(quick_gelu: bool = True, image_size: int = 64) -> torch.nn.Module:
    """A two-block CLIP (ViT/16 image tower, 64 wide) with non-zero biases."""
    torch.manual_seed(0)
    vision = dict(image_size=image_size, layers=2, width=64, patch_size=16, head_width=32)
    text = dict(context_length=8, vocab_size=100, width=32, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quick_gelu", "gelu"])
def test_view_and_blocks_reproduce_open_clips_own_forward(quick_gelu):
    model = tiny_clip(quick_gelu)
    bb = load_backbone(model)
    assert bb.family == "open_clip" and bb.block_view(0).activation == ("quick_gelu" if quick_gelu else "gelu")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens, ctx = bb.embed(x)
        for i in range(bb.depth):
            from_view = view_block(bb, i, tokens, ctx)
            tokens = bb.run_block(i, tokens, ctx)
            assert (from_view - tokens).abs().max() < 1e-5
        final = bb.final_norm(tokens)
        assert (final - bb.model_forward(x)).abs().max() < 1e-5
        assert (bb.pooled(final, ctx) - model.encode_image(x)).abs().max() < 1e-5  # the image embedding itself
        outs, ctx = bb.forward_layers(torch.randn(1, 3, 96, 64))  # another grid: open_clip alone refuses it
        assert ctx.grid == (6, 4) and outs[-1].shape == (1, 25, 64)


def test_repair_trains_the_value_rows_of_the_fused_in_projection_in_place(tmp_path):
    """No plain Linear holds q/k/v: the v rows must still train, q and k must not, and the model
    keeps its modules and keys. A loose rule (gate off, mean + 1 std) gives the untrained model defects to train on."""
    model = tiny_clip(image_size=112)
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = RepairConfig(max_steps=3, progress=False, rule=DefectRule(norm_gate=0, mask_thr=1.0), lr=0.5)
    repair(model, bundled_photos(BUNDLED_TRAIN[:3]), config, eval_images=bundled_photos(BUNDLED_EVAL[:2]), out_dir=tmp_path / "run")
    after = model.state_dict()
    assert list(after) == keys and type(model.visual.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    d = 64
    moved = [k for k in keys if not torch.equal(before[k], after[k])]
    assert moved and all(k.startswith("visual.transformer.resblocks.") for k in moved), moved
    in_proj = [k for k in keys if k.endswith("attn.in_proj_weight")]
    assert all(torch.equal(before[k][: 2 * d], after[k][: 2 * d]) for k in in_proj)  # q and k never train
    assert any(not torch.equal(before[k][2 * d :], after[k][2 * d :]) for k in in_proj), moved  # v does
    bb, x = load_backbone(model), torch.randn(1, 3, 112, 112)
    with torch.no_grad():  # the folded weights are the model's own: open_clip's forward sees the repair
        assert (bb.final_norm(bb.forward_layers(x)[0][-1]) - bb.model_forward(x)).abs().max() < 1e-5
    exported = tmp_path / "run" / "weights" / "open_clip_model.safetensors"
    assert exported.is_file()  # written and re-loaded by the export check


def test_named_architecture_exports_a_state_dict_open_clip_loads_strictly(tmp_path):
    bb = load_backbone("open_clip:ViT-B-32", random_init=True)
    with torch.no_grad():  # an edit like repair's, so the file holds something of its own
        bb.block_view(11).v.weight.mul_(0.5)
    path = save_weights(bb, tmp_path / "out")
    from safetensors.torch import load_file

    plain = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    plain.load_state_dict(load_file(str(path)), strict=True)  # the documented recipe, nothing from sinder
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (plain.encode_image(x) - bb.model.encode_image(x)).abs().max() < 1e-5
    again = load_backbone("open_clip:ViT-B-32", weights=path)  # and back through the spec
    assert max_token_diff(bb, again, x) <= 1e-6 and max_token_diff(bb, reload_exported(bb, path), x) <= 1e-6


def test_open_clip_refusals_are_one_line():
    from sinder.errors import ModelSpecError, WeightsError

    with pytest.raises(ModelSpecError, match="open_clip has no model 'ViT-Nope'"):
        load_backbone("open_clip:ViT-Nope", random_init=True)
    with pytest.raises(WeightsError, match="pass --weights FILE"):
        load_backbone("open_clip:ViT-B-32")


# -- proven on planted defects: planted:open_clip ---------------------------------------------------
def test_a_timm_clip_layout_vit_maps_onto_open_clips_image_tower():
    """The key map behind the open_clip member: a timm CLIP-layout ViT and the open_clip tower it
    maps to (fused qkv = nn.MultiheadAttention's in_proj) give the same tokens on the same pixels;
    a DINOv2-layout state dict (LayerScale, patch bias) is refused in one line."""
    import timm

    from sinder.backbones.convert import timm_clip_to_open_clip
    from sinder.errors import WeightsError

    torch.manual_seed(0)
    kwargs = dict(pretrained=False, num_classes=0, img_size=56, depth=2)
    t = timm.create_model("vit_small_patch14_dinov2", pre_norm=True, act_layer="quick_gelu", init_values=0.0, **kwargs).eval()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vision = dict(image_size=56, patch_size=14, layers=2, width=384, head_width=64, norm_kwargs={"eps": 1e-6})
    clip = open_clip.CLIP(
        embed_dim=384, vision_cfg=vision, text_cfg=dict(context_length=4, vocab_size=8, width=8, heads=1, layers=1), quick_gelu=True
    )
    state = timm_clip_to_open_clip(t.state_dict())
    clip.visual.load_state_dict({**state, "proj": torch.eye(384)}, strict=True)
    px = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        v = clip.eval().visual
        assert (t.forward_features(px) - v.ln_post(v.transformer(v._embeds(px)))).abs().max() < 1e-5
    dinov2 = timm.create_model("vit_small_patch14_dinov2", **kwargs).state_dict()
    with pytest.raises(WeightsError, match="not a timm CLIP-layout model"):
        timm_clip_to_open_clip(dinov2)


@pytest.mark.slow
def test_the_planted_open_clip_member_is_the_clip_member_in_open_clip():
    """planted:open_clip is planted:clip's function (the same circuits and seed) as an open_clip.CLIP:
    the same tokens on photos, the same ignited cells, and open_clip's own encode_image gives its
    image embedding (proj is the identity: the final-normed CLS)."""
    from sinder.images import ImageSet
    from sinder.measure import forward_tokens

    ours, hf = load_backbone("planted:open_clip"), load_backbone("planted:clip")
    assert type(ours.model) is open_clip.CLIP and ours.family == "planted" and ours.num_prefix_tokens == 1
    assert type(ours.model.visual.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    assert ours.mean == hf.mean and ours.std == hf.std  # OpenAI CLIP's normalisation in both
    images = ImageSet.from_inputs(bundled_photos(BUNDLED_EVAL[:4]), ours, ours.image_size)
    ignited = 0
    with torch.no_grad():
        for _, px in images.batches(4):
            a, b = forward_tokens(ours, px), forward_tokens(hf, px)
            assert (a.final - b.final).abs().max() < 1e-4 and (a.last - b.last).abs().max() < 1e-4 * b.last.abs().max()
            cells = ours.ground_truth.ignition(ours, px)
            assert torch.equal(cells, hf.ground_truth.ignition(hf, px))
            ignited += int(cells.sum())
            assert (ours.model.encode_image(px) - a.final[:, 0]).abs().max() < 1e-4
    assert ignited > 0  # the comparison covers defect tokens


@pytest.mark.slow
def test_the_default_repair_clears_the_planted_open_clip_member_and_open_clip_rebuilds_the_export(tmp_path):
    """The zoo targets on photos the repair never saw (energy along u drops >= 95%, max/median <= 3,
    cosines >= 0.999), only the v rows of the fused in-projection train, and the exported state
    dict loads strictly into open_clip.CLIP(**config) with the config the export records."""
    import json

    from safetensors.torch import load_file

    bb = load_backbone("planted:open_clip")
    in_proj = {k: v.clone() for k, v in bb.model.state_dict().items() if k.endswith("attn.in_proj_weight")}
    repaired_to_zoo_targets(bb, tmp_path / "run")
    d, now = bb.embed_dim, bb.model.state_dict()
    assert all(torch.equal(w[: 2 * d], now[k][: 2 * d]) for k, w in in_proj.items())  # q and k never train
    assert any(not torch.equal(w[2 * d :], now[k][2 * d :]) for k, w in in_proj.items())
    folder = tmp_path / "run" / "weights"
    meta = json.loads((folder / "model_spec.json").read_text())
    assert meta["format"] == "open_clip" and meta["arch"] is None and meta["spec"] == "planted:open_clip"
    plain = open_clip.CLIP(**meta["config"]).eval()  # nothing from sinder
    plain.load_state_dict(load_file(str(folder / "open_clip_model.safetensors")), strict=True)
    x = torch.rand(2, 3, bb.image_size, bb.image_size)
    assert max_token_diff(bb, load_backbone(plain), x) <= 1e-5
    assert max_token_diff(bb, load_backbone("planted:open_clip", weights=folder / "open_clip_model.safetensors"), x) <= 1e-5


def test_hooks_on_an_open_clip_block_fire_through_sinders_block_calls():
    """The fixes that need no training (test-time registers, interpolation) are hooks on the user's
    blocks; sinder's own block calls must run through them, as open_clip's forward does."""
    bb = load_backbone(tiny_clip())
    x = torch.randn(1, 3, 64, 64)
    handle = bb.blocks()[0].register_forward_hook(lambda module, inputs, out: torch.zeros_like(out))
    try:
        with torch.no_grad():
            outs, _ = bb.forward_layers(x)
    finally:
        handle.remove()
    assert outs[0].abs().max() == 0
    with torch.no_grad():
        assert bb.forward_layers(x)[0][0].abs().max() > 0


@pytest.mark.slow
def test_every_fix_without_training_clears_the_planted_open_clip_member(tmp_path):
    """Test-time registers, the σ clamp and neighbour interpolation on planted:open_clip, measured
    by sinder compare on photos the fixes never saw (registers and interpolation are hooks)."""
    from sinder.compare import CompareConfig, compare
    from sinder.fixes import ClampFix, InterpolationFix, RegistersFix

    bb = load_backbone("planted:open_clip")
    config = CompareConfig(max_maps=0, fixes=(RegistersFix(), ClampFix(), InterpolationFix()))
    report = compare(bb, bundled_photos(BUNDLED_TRAIN[:4]), bundled_photos(BUNDLED_EVAL[:4]), config, tmp_path / "cmp")
    methods = report["methods"]
    base = methods["original"]["last_layer"]
    assert base["energy_along_u"] > 0.2 and base["max_over_median"] > 4
    for name in ("registers", "clamp", "interp"):
        last, feats = methods[name]["last_layer"], methods[name]["features"]
        assert last["energy_along_u"] < 0.01 * base["energy_along_u"] and last["max_over_median"] < 2.5, (name, last)
        assert feats["non_defect_cosine"] > 0.99 and feats["cls_cosine"] > 0.99, (name, feats)


def test_an_open_clip_checkpoint_loads_into_timms_clip_vit_through_timms_own_filter(tmp_path):
    """`timm:vit_*_clip_* --weights` takes an open_clip (OpenAI-layout) state dict: timm's
    checkpoint_filter_fn for ViTs adapts it, and timm's tower gives open_clip's tokens."""
    from safetensors.torch import save_file

    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()  # LAION's layout: GELU, as timm's vit_base_patch32_clip_224
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    bb = load_backbone("timm:vit_base_patch32_clip_224", weights=tmp_path / "open_clip_model.safetensors")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert bb.family == "timm" and max_token_diff(load_backbone(model), bb, x) <= 1e-5
