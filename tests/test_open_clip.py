"""open_clip: the ViT image tower of ``open_clip.CLIP`` through the canonical view (its fused
``nn.MultiheadAttention`` in-projection included), repaired in place and exported as a state dict
that ``open_clip.create_model(ARCH)`` loads with ``strict=True``."""

from __future__ import annotations

import pytest
import torch
from helpers.families import view_block

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
