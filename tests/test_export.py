"""Export writes each family's own format atomically, and the file reloads to the same tokens."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from helpers.models import liven

from sinder.backbones import load_backbone
from sinder.backbones.hf_vit import HFViTBackbone
from sinder.backbones.timm_loader import wrap_timm
from sinder.errors import OutputExistsError
from sinder.export import max_token_diff, reload_exported, save_weights

ROUND_TRIP = 1e-6


def _timm_backbone(name="vit_small_patch14_reg4_dinov2", family="timm", **kw):
    kwargs = dict(depth=2, **kw)
    model = liven(timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, img_size=56, **kwargs))
    bb = wrap_timm(model, f"{family}:{name}" if family == "timm" else "planted:small", family=family)
    bb.timm_kwargs = kwargs  # architecture overrides the export must record to rebuild this tiny model
    if family == "planted":
        bb.timm_name = name
    return bb


def _repair_like_edit(bb):
    """What repair does: rescale singular values of a block's weights in place, through the view."""
    with torch.no_grad():
        view = bb.block_view(bb.depth - 1)
        for s in (view.v, view.proj, view.mlp_out):
            u, sig, vh = torch.linalg.svd(s.weight, full_matrices=False)
            s.weight.copy_(u @ torch.diag(sig * torch.linspace(0.5, 1.5, sig.numel())) @ vh)


def _pixels(bb):
    return torch.randn(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(3))


def _check_round_trip(bb, tmp_path):
    x = _pixels(bb)
    with torch.no_grad():
        original = bb.model_forward(x)
    _repair_like_edit(bb)
    path = save_weights(bb, tmp_path / "out")
    again = reload_exported(bb, path)
    assert again.family == bb.family and again.image_size == bb.image_size
    assert max_token_diff(bb, again, x) <= ROUND_TRIP
    with torch.no_grad():  # the file holds the edited weights, not the original ones
        assert (again.model_forward(x) - original).abs().max().item() > 1e-3
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    return path


@pytest.mark.parametrize("family", ["timm", "planted"])
def test_timm_export_round_trip_and_plain_timm_load(tmp_path, family):
    bb = _timm_backbone(family=family)
    path = _check_round_trip(bb, tmp_path)
    assert path.name == "model.safetensors"
    meta = json.loads((path.parent / "model_spec.json").read_text())
    assert meta["timm_name"] == "vit_small_patch14_reg4_dinov2" and meta["img_size"] == 56
    # the documented recipe, with nothing from sinder
    from safetensors.torch import load_file

    plain = timm.create_model(
        meta["timm_name"], pretrained=False, img_size=meta["img_size"], num_classes=meta["num_classes"], **meta["kwargs"]
    ).eval()
    plain.load_state_dict(load_file(str(path)), strict=True)
    x = _pixels(bb)
    with torch.no_grad():
        assert (plain.forward_features(x) - bb.model_forward(x)).abs().max().item() <= ROUND_TRIP


def test_timm_export_of_giant_swiglu(tmp_path):
    _check_round_trip(_timm_backbone("vit_giant_patch14_dinov2", embed_dim=96, num_heads=2), tmp_path)


def test_timm_eva_export(tmp_path):
    model = liven(
        timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, num_classes=0, img_size=64, depth=2, embed_dim=64, num_heads=2)
    )
    bb = wrap_timm(model, "timm:vit_small_patch16_dinov3_qkvb")
    bb.timm_kwargs = dict(depth=2, embed_dim=64, num_heads=2)
    _check_round_trip(bb, tmp_path)


@pytest.mark.parametrize("kind", ["dinov2_reg_swiglu", "dinov3"])
def test_hf_export_round_trip(tmp_path, kind):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel, DINOv3ViTConfig, DINOv3ViTModel

    if kind == "dinov3":
        cfg = DINOv3ViTConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_register_tokens=4, image_size=64
        )
        model = DINOv3ViTModel(cfg)
    else:
        cfg = Dinov2WithRegistersConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14, use_swiglu_ffn=True
        )
        model = Dinov2WithRegistersModel(cfg)
    bb = HFViTBackbone(liven(model), "hf:tiny")
    path = _check_round_trip(bb, tmp_path)
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    via_spec = load_backbone(f"hf:{path}")  # the folder is an ordinary hf:DIR
    assert max_token_diff(bb, via_spec, _pixels(bb)) <= ROUND_TRIP


def test_official_export_round_trip(tmp_path):
    from timm.models.vision_transformer import checkpoint_filter_fn

    from sinder.backbones.convert import timm_to_official_dinov2

    model = liven(timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=56))
    torch.save(timm_to_official_dinov2(model.state_dict()), tmp_path / "in.pth")
    bb = load_backbone("dinov2:vits14_reg", weights=tmp_path / "in.pth")
    path = _check_round_trip(bb, tmp_path)
    assert path.name == "vits14_reg_sinder.pth"
    sd = torch.load(path, weights_only=True)  # a plain state dict, official keys
    assert {"cls_token", "pos_embed", "register_tokens", "mask_token", "blocks.0.attn.qkv.weight", "blocks.0.ls1.gamma"} <= sd.keys()
    assert sd["pos_embed"].shape[1] == 1 + 16 and not any(k.startswith(("reg_token", "head")) for k in sd)
    converted = checkpoint_filter_fn(dict(sd), bb.model)
    assert converted.keys() == bb.model.state_dict().keys()


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    bb = _timm_backbone()
    first = save_weights(bb, tmp_path)
    stamp = first.stat().st_mtime_ns
    with pytest.raises(OutputExistsError) as err:
        save_weights(bb, tmp_path)
    assert "--overwrite" in str(err.value) and "\n" not in str(err.value)
    assert first.stat().st_mtime_ns == stamp
    _repair_like_edit(bb)
    second = save_weights(bb, tmp_path, overwrite=True)
    assert second == first and max_token_diff(bb, reload_exported(bb, second), _pixels(bb)) <= ROUND_TRIP

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    from transformers import Dinov2Config, Dinov2Model

    hf = HFViTBackbone(Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28)), "hf:t")
    with pytest.raises(OutputExistsError):
        save_weights(hf, hf_dir)
    assert (hf_dir / "config.json").read_text() == "{}"


@pytest.mark.parametrize("kind", ["clip", "clip_model", "siglip", "siglip2"])
def test_hf_tower_export_round_trip_in_the_users_own_class(tmp_path, kind):
    """CLIP and SigLIP vision towers (and a whole CLIPModel, text tower kept) save with
    save_pretrained and load back with transformers' own from_pretrained, same tokens."""
    from helpers.towers import tower_model

    from sinder.backbones.hf_loader import hf_backbone

    model = tower_model(kind)
    bb = hf_backbone(liven(model), "hf:tiny")
    path = _check_round_trip(bb, tmp_path)
    plain = type(model).from_pretrained(str(path)).eval()  # nothing from sinder
    assert plain.state_dict().keys() == model.state_dict().keys()
    assert max_token_diff(bb, hf_backbone(plain, "hf:plain"), _pixels(bb)) <= ROUND_TRIP
    if kind == "clip_model":  # the text tower travels untouched
        assert torch.equal(plain.text_model.embeddings.token_embedding.weight, model.text_model.embeddings.token_embedding.weight)


@pytest.mark.slow
@pytest.mark.parametrize("member", ["clip", "siglip", "dinov3"])
def test_converted_zoo_members_export_in_their_own_library(tmp_path, member):
    """``planted:clip`` exports with save_pretrained and transformers' CLIPVisionModel loads it;
    ``planted:siglip`` and ``planted:dinov3`` (Eva) export for timm, whose create_model with the
    recorded architecture loads them strictly: the same tokens, the edit included."""
    bb = load_backbone(f"planted:{member}")
    path = _check_round_trip(bb, tmp_path)
    if member == "clip":
        from transformers import CLIPVisionModel

        plain = load_backbone(CLIPVisionModel.from_pretrained(str(path)).eval())  # nothing from sinder
    else:
        meta = json.loads((path.parent / "model_spec.json").read_text())
        model = timm.create_model(meta["timm_name"], pretrained=False, num_classes=0, img_size=meta["img_size"], **meta["kwargs"])
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(path)), strict=True)
        plain = load_backbone(model.eval())
    assert max_token_diff(bb, plain, _pixels(bb)) <= ROUND_TRIP
