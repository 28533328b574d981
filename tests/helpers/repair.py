"""Shared fixtures for the repair tests: a tiny timm ViT (3 blocks, d=48, 12×12 grid at 84 px)
with a planted singular defect, and smooth random photos. No tests here."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMG, PATCH, DIM, DEPTH = 84, 7, 48, 3
GRID = IMG // PATCH
MARKERS = ((3, 4), (7, 8), (5, 9), (8, 3))
IGNITE = 1  # the block whose MLP writes the defect direction u on marked tokens


def tiny_backbone(seed: int = 0, depth: int = DEPTH):
    """(backbone, directions): marked positions get a large u component from block ``IGNITE`` on.

    As in ``planted:small``: a marker m in the positional embedding at a few positions, an MLP
    neuron in block 1 that reads m and writes u, and u/m projected out of everything else, so
    the first layer with defects is 1 and ν_i = u there.
    """
    import timm

    from sinder.backbones.timm_loader import wrap_timm

    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_small_patch14_dinov2",
        pretrained=False,
        num_classes=0,
        img_size=IMG,
        patch_size=PATCH,
        embed_dim=DIM,
        depth=depth,
        num_heads=3,
        init_values=0.1,
        dynamic_img_size=True,
    ).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    basis = torch.randn(DIM, 2, generator=gen, dtype=torch.float64)
    basis -= basis.mean(dim=0, keepdim=True)
    q, _ = torch.linalg.qr(basis)
    u, m = q[:, 0].float(), q[:, 1].float()
    quiet = torch.stack([u, m])

    def project_out(t: torch.Tensor, dim: int) -> None:
        moved = t.movedim(dim, -1)
        moved -= (moved @ quiet.T) @ quiet

    with torch.no_grad():
        model.cls_token.normal_(0.0, 0.5, generator=gen)
        model.pos_embed.normal_(0.0, 0.3, generator=gen)
        project_out(model.patch_embed.proj.weight, 0)
        project_out(model.patch_embed.proj.bias, 0)
        project_out(model.pos_embed, 2)
        project_out(model.cls_token, 2)
        for blk in model.blocks:
            for lin in (blk.attn.proj, blk.mlp.fc2):
                project_out(lin.weight, 0)
                project_out(lin.bias, 0)
        for r, c in MARKERS:
            model.pos_embed[0, 1 + r * GRID + c] += 8.0 * m
        fc1, fc2 = model.blocks[IGNITE].mlp.fc1, model.blocks[IGNITE].mlp.fc2
        j = fc1.out_features - 1
        fc1.weight[j] = 1.0 * m
        fc1.bias[j] = -2.0
        fc2.weight[:, j] = 40.0 * u
    bb = wrap_timm(model, "timm:vit_small_patch14_dinov2")
    bb.timm_name = "vit_small_patch14_dinov2"  # lets sinder.export re-create it
    bb.timm_kwargs = dict(patch_size=PATCH, embed_dim=DIM, depth=depth, num_heads=3, init_values=0.1)
    return bb, u.expand(depth, DIM).clone()


def photos(n: int, seed: int = 0, size: int = IMG) -> list[Image.Image]:
    """Smooth random RGB images (bicubic upsampled 8×8 noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        out.append(Image.fromarray(a).resize((size, size), Image.BICUBIC))
    return out


def pixels(images, backbone) -> torch.Tensor:
    from sinder.images import preprocess

    return torch.stack([preprocess(im, IMG, PATCH, backbone.mean, backbone.std, square=True) for im in images])


def repaired_to_zoo_targets(backbone, out_dir) -> dict:
    """A default repair of a planted ``backbone`` on the bundled training photos, judged on the
    bundled evaluation photos it never saw, asserted to meet the zoo targets (a clean pass; energy
    along u down >= 95%, max/median <= 3, non-defect and CLS/pooled cosines >= 0.999); its summary."""
    from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN, bundled_photos
    from sinder.repair import RepairConfig, repair

    config = RepairConfig(progress=False, analysis=False)  # the held-out metrics alone: the analysis folders are tested elsewhere
    s = repair(backbone, bundled_photos(BUNDLED_TRAIN), config, eval_images=bundled_photos(BUNDLED_EVAL), out_dir=out_dir).summary
    before, after, features = s["metrics"]["before"], s["metrics"]["after"], s["metrics"]["features"]
    assert s["stop_reason"] == "clean_pass" and before["energy_along_u"] > 0.3 and before["max_over_median"] > 4, (s["stop_reason"], before)
    assert after["energy_along_u"] <= 0.05 * before["energy_along_u"] and after["max_over_median"] <= 3, after
    summary_cosine = features["cls_cosine"] if backbone.has_cls_token else features["pooled_cosine"]
    assert features["non_defect_cosine"] >= 0.999 and summary_cosine >= 0.999, features
    return s
