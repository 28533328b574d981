"""``RepairConfig.faithful()`` is the reference SINDER loop, step for step.

The reference (haoqiwang/sinder: ``main.py`` ``train``, ``neighbor_loss.py``, ``repair.py``) is
transcribed literally below, in the test, on the same model, pixels and directions: its own
SVD modules (``U @ diag(S + ε) @ Vᵀ`` rebuilt on every call, only ε of v/proj/fc1/fc2 trains),
its detection inside the loss, its skip history pre-filled with 1000 ``False``, images walked in
order, gradients of blocks before the window dropped, SGD(momentum 0.9).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.repair import photos, pixels, tiny_backbone
from torch import nn

from sinder.repair import RepairConfig, repair

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see the fixture

STEPS, LR, LIMIT = 24, 0.05, 2


# -- the reference, transcribed -----------------------------------------------------------------
class RefSVD(nn.Module):
    def __init__(self, linear: nn.Linear, trainable: tuple[bool, ...] = (True,)) -> None:
        super().__init__()
        self.bias = linear.bias.detach()
        chunks = linear.weight.detach().chunk(len(trainable), dim=0)
        self.factors = [torch.linalg.svd(w, full_matrices=False) for w in chunks]
        self.eps = nn.ParameterList(nn.Parameter(torch.zeros_like(s), requires_grad=t) for (_, s, _), t in zip(self.factors, trainable))

    def forward(self, x):
        w = torch.cat([u @ torch.diag(s + e) @ vt for (u, s, vt), e in zip(self.factors, self.eps)])
        return F.linear(x, w, self.bias)


def ref_prepare(model: nn.Module) -> list[nn.Parameter]:
    for p in model.parameters():
        p.requires_grad = False
    for blk in model.blocks:
        blk.attn.qkv = RefSVD(blk.attn.qkv, (False, False, True))  # only v trains
        blk.attn.proj = RefSVD(blk.attn.proj)
        blk.mlp.fc1 = RefSVD(blk.mlp.fc1)
        blk.mlp.fc2 = RefSVD(blk.mlp.fc2)
    return [p for p in model.parameters() if p.requires_grad]


def ref_check_anomaly(x, h, w, direction, temperature=0.1, mask_thr=4.0, kernel=3):
    x_token = x[:, 1:].reshape(h, w, -1)
    with torch.no_grad():
        logits = -(F.normalize(x_token, dim=-1) * F.normalize(direction, dim=-1)).sum(dim=-1).abs()
        prob = torch.exp(logits / temperature)
        pad = kernel // 2
        wts = prob.unfold(0, kernel, 1).unfold(1, kernel, 1)
        wts = wts / wts.sum(dim=(-1, -2), keepdim=True)
        gauss = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float32) / 16
        w2 = wts * gauss
        w2 = w2 / w2.sum(dim=(-1, -2), keepdim=True)
        target = (x_token.unfold(0, kernel, 1).unfold(1, kernel, 1) * w2[:, :, None]).sum(dim=(-1, -2))
        mask = logits < logits.mean() - mask_thr * logits.std()
        mask[:pad, :] = mask[:, :pad] = mask[-pad:, :] = mask[:, -pad:] = False
        index = torch.nonzero(mask.flatten()).flatten()
        if len(index) == 0:
            return None
        rows, cols = index // w, index % w
        alpha = x_token[pad:-pad, pad:-pad].norm(dim=-1).mean()
    loss = (x_token[rows, cols] - target[rows - pad, cols - pad]).norm(dim=-1).mean() / alpha
    return loss, rows


def ref_neighbor_loss(model, x, directions, skip_less_than=3):
    h, w = x.shape[2] // model.patch_embed.patch_size[0], x.shape[3] // model.patch_embed.patch_size[1]
    x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    for i, blk in enumerate(model.blocks):
        x = blk(x)
        result = ref_check_anomaly(x, h, w, directions[i])
        if result is not None and len(result[1]) >= skip_less_than:
            return i, result[0], len(result[1])
    return None


def ref_train(model, dataset, directions, steps):
    params = ref_prepare(model)
    optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9)
    skip_history = [False] * 1000
    log = []
    for it in range(steps):
        img = dataset[it % len(dataset)]
        if np.array(skip_history[-1000:]).astype(float).mean() >= 0.75:
            break
        model.zero_grad()
        with torch.enable_grad():
            result = ref_neighbor_loss(model, img[None], directions)
        if result is None:
            skip_history.append(True)
            log.append((None, 0, None))
            continue
        skip_history.append(False)
        layer, loss, count = result
        log.append((layer, count, float(loss.detach())))
        loss.backward()
        for t in range(layer - LIMIT + 1):
            for p in model.blocks[t].parameters():
                p.grad = None
        optimizer.step()
    return log


# -- the comparison -----------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_faithful_mode_matches_the_reference_loop_step_for_step(impl):
    bb, dirs = tiny_backbone(depth=4)
    data = [p for p in pixels(photos(5, seed=3), bb)]
    ref_model, _ = tiny_backbone(depth=4)
    expected = ref_train(ref_model.model, data, dirs, STEPS)
    assert any(e[0] is None for e in expected) and any(e[0] is not None for e in expected)  # trains, then skips

    rows: list[dict] = []
    cfg = RepairConfig.faithful(
        impl=impl, lr=LR, limit_layers=LIMIT, max_steps=STEPS, progress=False, export=False, analysis=False, num_eval_max=0
    )
    result = repair(bb, data, cfg, directions=dirs, on_step=rows.append)
    got = [(r["layer"], r["defects"], r["loss"]) for r in rows]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for (_, _, lg), (_, _, le) in zip(got, expected):
        assert (lg is None) == (le is None) and (lg is None or abs(lg - le) <= 1e-4 * abs(le))
    # ε agree wherever the singular vectors are defined: the planted model's quiet directions
    # make some singular values 0, whose vectors any SVD picks arbitrarily
    for i, blk in enumerate(ref_model.model.blocks):
        parts = (("v", blk.attn.qkv, 2), ("proj", blk.attn.proj, 0), ("mlp_in", blk.mlp.fc1, 0), ("mlp_out", blk.mlp.fc2, 0))
        for key, module, k in parts:
            eps, sigma = module.eps[k].detach(), module.factors[k][1]
            defined = sigma > 1e-4 * sigma.max()
            mine = result.epsilon[f"blocks.{i}.{key}"]
            assert (mine - eps)[defined].abs().max() <= 1e-4 * max(eps.abs().max().item(), 1e-3), (i, key)
