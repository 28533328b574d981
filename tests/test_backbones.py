"""Every backbone family: the canonical view reproduces the model's own forward, is a live reference,
and its CLS attention is the model's; weight formats (official / timm / HF) give the same tokens."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers.families import ALL_CASES, EXPECTED_ACT, _hf, _hf_cfg, _timm, make, pixels, view_block
from helpers.models import liven
from helpers.repair import repaired_to_zoo_targets
from timm.models.vision_transformer import checkpoint_filter_fn

from sinder.backbones import load_backbone, parse_spec
from sinder.backbones.convert import hf_dinov2_to_official, official_dinov2_to_hf, timm_to_official_dinov2
from sinder.backbones.hf_loader import known_config, known_hf_ids, load_hf
from sinder.backbones.hf_vit import HFViTBackbone
from sinder.backbones.timm_loader import wrap_timm
from sinder.errors import ModelSpecError, SinderError, WeightsError

TOL = 1e-5


@pytest.mark.parametrize("case", ALL_CASES)
def test_view_reproduces_model_forward_block_by_block(case):
    bb = make(case)
    x = pixels(bb)
    own = []
    hooks = [blk.register_forward_hook(lambda m, i, o: own.append(o)) for blk in bb.blocks()]
    with torch.no_grad():
        final = bb.model_forward(x)
        for hk in hooks:
            hk.remove()
        tokens, ctx = bb.embed(x)
        assert tokens.shape[1] == bb.num_prefix_tokens + ctx.grid[0] * ctx.grid[1]
        assert ctx.grid == (x.shape[-2] // bb.patch_size, x.shape[-1] // bb.patch_size)
        for i in range(bb.depth):
            from_view = view_block(bb, i, tokens, ctx)
            tokens = bb.run_block(i, tokens, ctx)
            assert (tokens - own[i]).abs().max().item() <= TOL, f"run_block {i}"
            assert (from_view - own[i]).abs().max().item() <= TOL, f"view block {i}"
        assert (bb.final_norm(tokens) - final).abs().max().item() <= TOL
    assert bb.block_view(0).activation == EXPECTED_ACT.get(case, "gelu")
    # the view names the live modules by their path in the model
    modules = dict(bb.model.named_modules())
    for s in bb.block_view(bb.depth - 1).slices():
        assert modules[s.name] is s.module


@pytest.mark.parametrize("case", ["dinov2_reg4", "dinov3_qkvb", "dinov3_qkv_unfused", "hf_dinov2_swiglu", "hf_dinov3"])
def test_view_is_a_live_reference(case):
    bb = make(case)
    x = pixels(bb, 0)
    with torch.no_grad():
        before = bb.model_forward(x)
        view = bb.block_view(1)
        view.v.weight.mul_(1.5)  # in place, through the view
        after = bb.model_forward(x)
        assert (after - before).abs().max().item() > 1e-3
        view.v.weight.div_(1.5)
        assert (bb.model_forward(x) - before).abs().max().item() <= TOL


def _model_attention(bb, x):
    """The attention probabilities the model itself computes, per block: (B, heads, N, N)."""
    if bb.family == "hf":
        extra = {"interpolate_pos_encoding": True} if hasattr(bb, "tower") else {}  # CLIP/SigLIP refuse other grids without it
        return list(bb.model(pixel_values=x, output_attentions=True, **extra).attentions)
    captured = {}
    for i, blk in enumerate(bb.blocks()):
        blk.attn.fused_attn = False  # timm's explicit path passes the probabilities through attn_drop
        blk.attn.attn_drop.register_forward_hook(lambda m, inp, out, i=i: captured.__setitem__(i, out))
    bb.model_forward(x)
    return [captured[i] for i in range(bb.depth)]


@pytest.mark.parametrize("case", ["dinov2_reg4", "clip_quickgelu", "dinov3", "dinov3_qkvb", "hf_dinov2_reg", "hf_dinov3", "hf_clip"])
def test_cls_attention_is_the_models_attention(case):
    bb = make(case)
    x = pixels(bb)
    with torch.no_grad():
        reference = _model_attention(bb, x)
        outs, ctx = bb.forward_layers(x)
        inputs = [bb.embed(x)[0]] + outs[:-1]
        for i in range(bb.depth):
            full = reference[i][:, :, 0]  # the CLS row over all tokens
            assert torch.allclose(full.sum(-1), torch.ones_like(full.sum(-1)), atol=1e-5)
            ours = bb.cls_attention(i, inputs[i], ctx)
            assert ours.shape == (x.shape[0], bb.block_view(i).num_heads, ctx.grid[0] * ctx.grid[1])
            assert (ours - full[:, :, bb.num_prefix_tokens :]).abs().max().item() <= 1e-6
            # with the prefix part, the CLS row sums to one over all tokens
            total = ours.sum(-1) + full[:, :, : bb.num_prefix_tokens].sum(-1)
            assert (total - 1).abs().max().item() <= 1e-5


# -- official DINOv2 format ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2", "vit_giant_patch14_dinov2"])
def test_timm_to_official_inverts_timms_own_filter_exactly(name):
    kw = dict(embed_dim=96, num_heads=2) if "giant" in name else {}
    model = _timm(name, img_size=56, **kw)
    sd = model.state_dict()
    official = timm_to_official_dinov2(sd)
    assert official["mask_token"].shape == (1, sd["cls_token"].shape[-1]) and not official["mask_token"].any()
    assert official["pos_embed"].shape[1] == 1 + 16  # cls entry + 4x4 grid, with or without registers
    if "giant" in name:
        assert "blocks.0.mlp.w12.weight" in official and "blocks.0.mlp.fc1.weight" not in official
    if "reg4" in name:
        assert official["register_tokens"].shape == (1, 4, sd["cls_token"].shape[-1])
    back = checkpoint_filter_fn(dict(official), model)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # official <-> HF is lossless too (qkv split/concat, w12 <-> [gate, up], gamma <-> lambda1)
    as_hf = official_dinov2_to_hf(official)
    again = hf_dinov2_to_official(as_hf)
    assert again.keys() == official.keys() and all(torch.equal(again[k], official[k]) for k in official)
    # ... and means the same model: the HF twin gives the timm tokens
    dim = sd["cls_token"].shape[-1]
    kind = "dinov2_reg" if "reg4" in name else "dinov2"
    cfg = _hf_cfg(kind, hidden_size=dim, num_attention_heads=model.blocks[0].attn.num_heads, use_swiglu_ffn="giant" in name)
    twin = _hf(cfg)
    twin.load_state_dict(as_hf, strict=True)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (twin(pixel_values=x).last_hidden_state - model.forward_features(x)).abs().max().item() <= TOL


def _official_file(tmp_path, timm_name, img_size):
    model = liven(timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True, img_size=img_size))
    path = tmp_path / "official.pth"
    torch.save(timm_to_official_dinov2(model.state_dict()), path)
    return model, path


@pytest.mark.parametrize("reg", [False, True])
def test_official_pth_equals_timm_and_hf_tokens(tmp_path, reg):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    timm_model, path = _official_file(tmp_path, f"vit_small_patch14{'_reg4' if reg else ''}_dinov2", 56)
    official = load_backbone(f"dinov2:vits14{'_reg' if reg else ''}", weights=path)
    assert official.family == "dinov2" and official.image_size == 56 and official.num_prefix_tokens == (5 if reg else 1)
    reference = wrap_timm(timm_model, "timm:ref")
    cfg_cls, model_cls = (Dinov2WithRegistersConfig, Dinov2WithRegistersModel) if reg else (Dinov2Config, Dinov2Model)
    with torch.device("meta"):  # no random init: every tensor comes from the file
        hf_model = model_cls(cfg_cls(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=56, patch_size=14))
    hf_model.load_state_dict(official_dinov2_to_hf(torch.load(path, weights_only=True)), strict=True, assign=True)
    hf = HFViTBackbone(hf_model.eval(), "hf:ref")
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    # the official .pth loads straight into an HF model (converted on load)
    cfg_dir = tmp_path / "hf_cfg"
    hf_model.config.save_pretrained(cfg_dir)
    from_official = load_hf(str(cfg_dir), "hf:cfg", weights=path)
    with torch.no_grad():
        tokens = official.model_forward(x)
        assert (tokens - reference.model_forward(x)).abs().max().item() <= 1e-6
        assert (tokens - hf.model_forward(x)).abs().max().item() <= 1e-5
        assert (tokens - from_official.model_forward(x)).abs().max().item() <= 1e-5


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module, not a state dict
    with pytest.raises(WeightsError) as err:
        load_backbone("dinov2:vits14", weights=path)
    assert "weights_only" in str(err.value) and "\n" not in str(err.value)


def test_16x16_grid_loads_as_224px(tmp_path):
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)
    sd = model.state_dict()
    assert sd["pos_embed"].shape[1] == 1 + 16 * 16
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "w.safetensors")
    assert load_backbone("timm:vit_small_patch14_dinov2", weights=tmp_path / "w.safetensors").image_size == 224
    torch.save(timm_to_official_dinov2(sd), tmp_path / "w.pth")
    assert load_backbone("dinov2:vits14", weights=tmp_path / "w.pth").image_size == 224


# -- HF loading ------------------------------------------------------------------------------
def test_hf_local_dir_and_weights_file(tmp_path):
    model = _hf(_hf_cfg("dinov2_reg", use_swiglu_ffn=True))
    model.save_pretrained(tmp_path / "dir")  # writes the legacy key names
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state
        (tmp_path / "dir" / "preprocessor_config.json").write_text('{"image_mean": [0.43, 0.41, 0.3], "image_std": [0.2, 0.19, 0.18]}')
        loaded = load_backbone(f"hf:{tmp_path / 'dir'}")
        assert loaded.family == "hf" and loaded.image_size == 56 and loaded.num_prefix_tokens == 5
        assert loaded.mean == (0.43, 0.41, 0.3) and loaded.std == (0.2, 0.19, 0.18)
        assert (loaded.model_forward(x) - ref).abs().max().item() <= 1e-6
        # --weights: a state dict (here the legacy-named save_pretrained file) into the dir's config
        with_weights = load_backbone(f"hf:{tmp_path / 'dir'}", weights=tmp_path / "dir" / "model.safetensors")
        assert (with_weights.model_forward(x) - ref).abs().max().item() <= 1e-6
        torch.save(model.state_dict(), tmp_path / "v5names.pth")  # current names, .pth
        from_pth = load_backbone(f"hf:{tmp_path / 'dir'}", weights=tmp_path / "v5names.pth")
        assert (from_pth.model_forward(x) - ref).abs().max().item() <= 1e-6
    sd = model.state_dict()
    sd.pop("layernorm.weight")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="missing"):
        load_backbone(f"hf:{tmp_path / 'dir'}", weights=tmp_path / "partial.pth")


def test_hf_known_ids_build_offline():
    configs = {i: known_config(i) for i in known_hf_ids()}
    assert all(c is not None for c in configs.values()) and len(configs) == 14
    g = configs["facebook/dinov2-giant"]
    assert (g.hidden_size, g.num_hidden_layers, g.num_attention_heads, g.use_swiglu_ffn, g.image_size) == (1536, 40, 24, True, 518)
    assert configs["facebook/dinov2-with-registers-large"].num_register_tokens == 4
    sp = configs["facebook/dinov3-vits16plus-pretrain-lvd1689m"]
    assert (sp.use_gated_mlp, sp.hidden_act, sp.intermediate_size, sp.patch_size) == (True, "silu", 1536, 16)
    bb = load_hf("facebook/dinov3-vits16-pretrain-lvd1689m", "hf:facebook/dinov3-vits16-pretrain-lvd1689m", random_init=True)
    assert (bb.depth, bb.embed_dim, bb.num_prefix_tokens, bb.image_size, bb.patch_size) == (12, 384, 5, 224, 16)


# -- one-line errors -------------------------------------------------------------------------
def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


def test_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("sinder.backbones.official_dinov2.hub_reachable", lambda timeout=3.0, host=None: False)
    cases = [
        (lambda: parse_spec("resnet50"), ModelSpecError, "unknown model spec"),
        (lambda: load_backbone("dinov2:vitx14", random_init=True), ModelSpecError, "vits14"),
        (lambda: load_backbone("dinov2:vits14"), ModelSpecError, "--weights"),
        (lambda: load_backbone("dinov2:vits14", weights=tmp_path / "missing.pth"), WeightsError, "not found"),
        (lambda: load_backbone("timm:not_a_model_xyz", random_init=True), ModelSpecError, "timm has no model"),
        (lambda: load_backbone("hf:facebook/not-a-dino", random_init=True), ModelSpecError, "no built-in config"),
        (lambda: load_backbone("hf:facebook/dinov2-small"), ModelSpecError, "unreachable"),
        (lambda: load_backbone(f"hf:{tmp_path}/no/such/dir"), ModelSpecError, "not found"),
        (lambda: load_backbone("hf:facebook/dinov2-small", weights=tmp_path / "missing.safetensors"), WeightsError, "not found"),
    ]
    from safetensors.torch import save_file
    from transformers import ViTConfig

    _hf_cfg("dinov2").save_pretrained(tmp_path / "config_only")
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "vit")
    _hf_cfg("dinov2").save_pretrained(tmp_path / "partial")
    sd = _hf(_hf_cfg("dinov2")).state_dict()
    sd.pop("layernorm.bias")
    save_file(sd, tmp_path / "partial" / "model.safetensors")
    cases += [
        (lambda: load_backbone(f"hf:{tmp_path / 'config_only'}"), WeightsError, "cannot load"),
        (lambda: load_backbone(f"hf:{tmp_path / 'vit'}", random_init=True), ModelSpecError, "not supported"),
        (lambda: load_backbone(f"hf:{tmp_path / 'partial'}"), WeightsError, "missing ['layernorm.bias']"),
    ]
    for call, kind, words in cases:
        with pytest.raises(kind) as err:
            call()
        assert isinstance(err.value, SinderError) and words in _one_line(err)


# timm models the adapters cannot serve: other classes (the first six used to crash with a TypeError
# on dynamic_img_size) and a VisionTransformer whose blocks are not pre-norm Blocks
UNSUPPORTED_TIMM = {
    "resnet50": "ResNet",
    "convnext_tiny": "ConvNeXt",
    "beit_base_patch16_224": "Beit",
    "vit_relpos_small_patch16_224": "VisionTransformerRelPos",
    "naflexvit_base_patch16_siglip": "NaFlexVit",
    "swin_tiny_patch4_window7_224": "SwinTransformer",
    "vit_base_patch16_xp_224": "ParallelScalingBlock",
}


def test_unsupported_timm_models_are_refused_in_one_line_before_they_are_built(monkeypatch):
    """Decided by class and block structure on a meta-device probe: nothing is initialised or downloaded."""
    devices = []
    create = timm.create_model

    def recording(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", recording)
    for name, what in UNSUPPORTED_TIMM.items():
        for kwargs in ({"random_init": True}, {}):  # untrained, and from the hub (refused before the network is asked)
            with pytest.raises(ModelSpecError) as err:
                load_backbone(f"timm:{name}", **kwargs)
            msg = _one_line(err)
            assert msg.startswith(f"timm:{name}: ") and what in msg, msg
            assert "VisionTransformer" in msg and "Eva" in msg  # names what is supported
    assert devices and set(devices) == {"meta"}


@pytest.mark.parametrize("case", ["hf_dinov3", "dinov3_rope_jitter"])
def test_rope_positions_do_not_jitter_in_train_mode(case):
    if case == "dinov3_rope_jitter":
        model = _timm("vit_small_patch16_dinov3", img_size=64, embed_dim=64, num_heads=2, rope_rescale_coords=2.0)
        bb = wrap_timm(model, "timm:jitter")
    else:
        bb = make(case)
    x = pixels(bb)
    with torch.no_grad():
        reference = bb.model_forward(x)  # eval mode
        bb.model.train()  # the model's own forward would now rescale RoPE coordinates at random
        for _ in range(2):
            outs, _ = bb.forward_layers(x)
            assert (bb.final_norm(outs[-1]) - reference).abs().max().item() <= TOL
    assert bb.model.training


# -- the family registry ---------------------------------------------------------------------
def test_builtin_families_are_registered():
    from sinder.backbones.registry import families, get_family

    assert [f.name for f in families()] == ["timm", "hf", "open_clip", "dinov2", "dinov3", "planted"]
    assert get_family("dinov2").key_maps["official"] is timm_to_official_dinov2
    with pytest.raises(ModelSpecError) as err:
        get_family("resnet")
    assert "timm, hf, open_clip, dinov2, dinov3, planted" in _one_line(err)


def test_registering_a_family_makes_its_specs_load_and_export(tmp_path):
    from sinder.backbones import registry
    from sinder.backbones.registry import Family, register_family
    from sinder.export import max_token_diff, reload_exported, save_weights
    from sinder.families.timm import reload_timm_format, save_timm_format

    kwargs = dict(depth=1, embed_dim=32, num_heads=2)

    def load(name, spec, weights=None, random_init=False):
        model = liven(
            timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=28, dynamic_img_size=True, **kwargs)
        )
        bb = wrap_timm(model, spec, family="toy")
        bb.timm_name, bb.timm_kwargs = "vit_small_patch14_dinov2", kwargs
        return bb

    toy = Family(name="toy", spec_help="toy:NAME", load=load, save=save_timm_format, reload=reload_timm_format)
    register_family(toy)
    try:
        with pytest.raises(ValueError):  # a second family under a taken name is a mistake
            register_family(Family(name="toy", spec_help="toy:X", load=load, save=save_timm_format, reload=reload_timm_format))
        bb = load_backbone("toy:x")
        assert bb.family == "toy" and bb.spec == "toy:x" and parse_spec("toy:x") == ("toy", "x")
        with pytest.raises(ModelSpecError) as err:
            parse_spec("nope:x")
        assert "toy:NAME" in _one_line(err) and "timm:NAME" in str(err.value)
        again = reload_exported(bb, save_weights(bb, tmp_path))  # export dispatches to the family too
        assert again.family == "toy" and max_token_diff(bb, again, pixels(bb)) <= TOL
    finally:
        registry._FAMILIES.pop("toy")
    with pytest.raises(ModelSpecError):
        parse_spec("toy:x")


def test_loading_the_planted_model_leaves_the_global_rng_alone():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    bb = load_backbone("planted:small")
    assert torch.equal(torch.get_rng_state(), state)
    assert bb.family == "planted" and bb.ground_truth.u.shape == (384,) and len(bb.ground_truth.positions) == 5


def _corrupt(path, kind):
    """A checkpoint file at ``path`` that is truncated, random bytes, empty or plain text."""
    sd = {"a": torch.randn(64, 64, generator=torch.Generator().manual_seed(0))}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    data = {"truncated": path.read_bytes()[: path.stat().st_size // 2], "garbage": bytes(range(256)) * 4, "empty": b"", "text": b"hello"}
    path.write_bytes(data[kind])
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "text"])
def test_corrupt_weight_files_are_one_line_weights_errors(tmp_path, suffix, kind):
    from sinder.backbones.weights import read_state_dict

    bad = _corrupt(tmp_path / f"model{suffix}", kind)
    with pytest.raises(WeightsError) as err:
        read_state_dict(bad)
    assert str(bad) in _one_line(err)


@pytest.mark.slow
def test_an_official_checkpoint_with_planted_defects_is_repaired_and_exported_in_the_official_layout(tmp_path):
    """planted:small written as an official DINOv2 .pth (the hub's key layout) is what dinov2:vits14
    --weights loads: the same tokens, the default repair clears it on photos it never saw, and the
    exported official .pth re-loads through dinov2:vits14 with the repaired tokens."""
    planted = load_backbone("planted:small")
    torch.save(timm_to_official_dinov2(planted.model.state_dict()), tmp_path / "dinov2_vits14_pretrain.pth")
    official = load_backbone("dinov2:vits14", weights=tmp_path / "dinov2_vits14_pretrain.pth")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (official.model_forward(x) - planted.model_forward(x)).abs().max() <= 1e-5
    official.ground_truth = planted.ground_truth  # the same function: the planted truth scores it
    repaired_to_zoo_targets(official, tmp_path / "run")
    exported = tmp_path / "run" / "weights" / "vits14_sinder.pth"
    assert set(torch.load(exported, weights_only=True)) == set(torch.load(tmp_path / "dinov2_vits14_pretrain.pth", weights_only=True))
    again = load_backbone("dinov2:vits14", weights=exported)
    with torch.no_grad():
        assert (again.model_forward(x) - official.model_forward(x)).abs().max() <= 1e-5
        assert (again.model_forward(x) - planted.model_forward(x)).abs().max() > 1e-3  # the repair, not the original


def _official_dinov3(sd: dict) -> dict:
    """A timm DINOv3 (Eva) state dict in Meta's layout (dinov3/models/vision_transformer.py):
    ``storage_tokens``, ``ls1.gamma``, one qkv bias with a k part masked to zero by ``bias_mask``,
    ``mask_token`` and the RoPE ``periods`` buffer."""
    out = {}
    for k, v in sd.items():
        if k.endswith("attn.v_bias"):
            continue
        if k.endswith("attn.q_bias"):
            zero = torch.zeros_like(v)
            out[k.replace("q_bias", "qkv.bias")] = torch.cat([v, zero, sd[k.replace("q_bias", "v_bias")]])
            out[k.replace("q_bias", "qkv.bias_mask")] = torch.cat([torch.ones_like(v), zero, torch.ones_like(v)])
            continue
        out[k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma").replace("reg_token", "storage_tokens")] = v
    dim = sd["cls_token"].shape[-1]
    out["mask_token"], out["rope_embed.periods"] = torch.zeros(1, dim), torch.linspace(1, 100, 16)
    return out


def test_an_official_dinov3_checkpoint_loads_as_timm_through_timms_own_filter(tmp_path):
    """`timm:vit_*_dinov3* --weights` takes Meta's own DINOv3 .pth: timm's checkpoint_filter_fn for
    Eva (the function timm loads it with) adapts it, and the tokens are the original model's."""
    from sinder.backbones.timm_loader import wrap_timm
    from sinder.export import max_token_diff

    model = liven(timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, num_classes=0)).eval()
    torch.save(_official_dinov3(model.state_dict()), tmp_path / "dinov3_vits16_pretrain.pth")
    bb = load_backbone("timm:vit_small_patch16_dinov3_qkvb", weights=tmp_path / "dinov3_vits16_pretrain.pth")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert max_token_diff(wrap_timm(model, "timm:ref"), bb, x) <= 1e-6
    with pytest.raises(WeightsError, match="weights do not fit"):  # a checkpoint of another architecture: one line
        load_backbone("timm:vit_small_patch14_dinov2", weights=tmp_path / "dinov3_vits16_pretrain.pth")


@pytest.mark.parametrize("biases", ["trained", "zero"])
def test_a_dinov3_checkpoint_in_metas_layout_is_written_back_key_for_key(tmp_path, biases):
    """dinov3:vits16 --weights takes Meta's .pth (through timm's own filter), picks timm's variant by
    the file (non-zero qkv biases: _qkvb; the distilled models' zero ones: the plain one), and
    exports Meta's layout with every key of the input: an edited tensor changed, all others equal
    (the RoPE periods, mask token, bias masks and masked k biases timm does not load included)."""
    from sinder.backbones.timm_loader import wrap_timm
    from sinder.export import max_token_diff, reload_exported, save_weights

    model = liven(timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, num_classes=0)).eval()
    official = _official_dinov3(model.state_dict())
    for key in [k for k in official if k.endswith("attn.qkv.bias")]:
        if biases == "zero":  # q and v zero; the masked k part may hold anything
            official[key] = torch.cat([torch.zeros(384), torch.randn(384), torch.zeros(384)])
            with torch.no_grad():
                model.get_parameter(key.replace("qkv.bias", "q_bias")).zero_()
                model.get_parameter(key.replace("qkv.bias", "v_bias")).zero_()
        else:
            official[key][384:768] = torch.randn(384)  # stored, masked in use: written back as it was
    torch.save(official, tmp_path / "dinov3_vits16_pretrain.pth")
    bb = load_backbone("dinov3:vits16", weights=tmp_path / "dinov3_vits16_pretrain.pth")
    assert bb.family == "dinov3" and bb.timm_name == (
        "vit_small_patch16_dinov3_qkvb" if biases == "trained" else "vit_small_patch16_dinov3"
    )
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert max_token_diff(wrap_timm(model, "timm:ref"), bb, x) <= 1e-6
    with torch.no_grad():
        bb.block_view(3).v.weight.mul_(0.5)  # an edit like repair's
    path = save_weights(bb, tmp_path / "out")
    assert path.name == "vits16_sinder.pth"
    written = torch.load(path, weights_only=True)
    assert set(written) == set(official)
    changed = [k for k in official if not torch.equal(written[k], official[k])]
    assert changed == ["blocks.3.attn.qkv.weight"], changed
    assert max_token_diff(bb, reload_exported(bb, path), x) <= 1e-6


def test_an_untrained_dinov3_exports_metas_layout_as_metas_code_initialises_it(tmp_path):
    """--random-init has no file to keep from: the RoPE periods are 100^(2i/(D_head/2)) (as Meta's
    RopePositionEmbedding), the mask token zero and the k biases masked, under Meta's names."""
    from sinder.export import save_weights

    bb = load_backbone("dinov3:vits16", random_init=True)
    written = torch.load(save_weights(bb, tmp_path / "out"), weights_only=True)
    official = _official_dinov3(timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, num_classes=0).state_dict())
    assert set(written) == set(official)
    assert torch.allclose(written["rope_embed.periods"], 100.0 ** (2 * torch.arange(16) / 32))
    assert torch.equal(written["blocks.0.attn.qkv.bias_mask"], torch.cat([torch.ones(384), torch.zeros(384), torch.ones(384)]))


def test_dinov3_refusals_are_one_line(tmp_path):
    torch.save(
        timm_to_official_dinov2(timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0).state_dict()),
        tmp_path / "v2.pth",
    )
    for call, match in (
        (lambda: load_backbone("dinov3:vitx16", random_init=True), "use dinov3:vits16"),
        (lambda: load_backbone("dinov3:vitl16"), "pass --weights FILE.pth"),
        (lambda: load_backbone("dinov3:vits16", weights=tmp_path / "v2.pth"), "not a DINOv3 checkpoint in Meta's layout"),
    ):
        with pytest.raises(SinderError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
