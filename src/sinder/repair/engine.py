"""One SINDER optimisation step, two ways.

``reference`` does literally what the reference code does: one image, blocks run with grad
from the embedding (weights rebuilt as U @ diag(σ+ε) @ Vᵀ on every call) until the first
layer with ≥ ``rule.skip_less_than`` defects, ``loss.backward()`` through everything, gradients of
blocks before the ``limit_layers`` window dropped, SGD step.

``fast`` computes the same update:
  * the defect search stops at the first qualifying layer per image; images are batched and
    leave the batch as soon as they qualify, then are grouped by their layer;
  * *one pass* (CPU, or when the graph fits in GPU memory): the search itself runs with grad
    and each group back-propagates with ``inputs=`` its window's ε only, so autograd never
    enters blocks before the window; *two pass*: a no-grad search caches the activation
    entering each window and only the window is re-run with grad;
  * linears run as three matmuls (x·V, ·(σ+ε), ·Uᵀ) or through a folded weight cached until ε
    changes, whichever costs fewer FLOPs (see ``singular.py``);
  * bf16 autocast on CUDA, optional ``torch.compile``.

Both finish through :meth:`Trainer._apply`: gradients are summed over ranks, divided by the
number of images with defects, a non-finite loss or gradient skips the step (logged), and
blocks outside every window keep ``grad=None`` so SGD leaves them (and their momentum) alone,
as the reference's ``p.grad = None`` does.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch

from ..backbones.base import Backbone
from ..detect import detect_layer
from .config import RepairConfig
from .distributed import DistContext
from .loss import gram_loss, neighbour_loss
from .singular import SingularModel

log = logging.getLogger(__name__)

WEAK_MIN = 3  # the reference's skip_less_than: fewer |cos| outliers are the noise tail


@dataclass
class StepResult:
    """What one iteration did on this rank (``loss``/``contributing`` are global)."""

    skipped: list[bool] = field(default_factory=list)  # per local image: no qualifying layer
    image_layers: list[int] = field(default_factory=list)  # per local image, batch order (-1: skipped)
    layers: list[int] = field(default_factory=list)  # per local image with defects
    defects: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    loss: float | None = None  # mean over all ranks' images with defects
    contributing: int = 0  # images with defects, all ranks
    total_defects: int = 0  # all ranks
    stepped: bool = False
    nonfinite: bool = False


@dataclass
class _Hit:
    """Images of one batch whose first qualifying layer is ``layer``."""

    layer: int
    images: torch.Tensor  # local indices into the batch
    grid: torch.Tensor  # (n, H, W, D) patch tokens at ``layer`` (with graph in one-pass mode)
    mask: torch.Tensor  # (n, H, W) defects
    counts: list[int]
    x_start: torch.Tensor | None = None  # two-pass: tokens entering the window


class Trainer:
    """Holds the optimiser and runs steps on a σ-parametrised backbone."""

    def __init__(
        self,
        backbone: Backbone,
        handle: SingularModel,
        directions: torch.Tensor,
        config: RepairConfig,
        dist: DistContext | None = None,
    ) -> None:
        self.backbone, self.handle, self.config = backbone, handle, config
        self.dist = dist or DistContext()
        self.device = backbone.device
        self.directions = torch.nn.functional.normalize(directions.detach().float().to(self.device), dim=-1)
        self.params = handle.parameters()
        self.optimizer = torch.optim.SGD(self.params, lr=config.lr, momentum=config.momentum)
        cuda = self.device.type == "cuda"
        self.amp = cuda and config.impl == "fast" and config.amp in ("auto", "bf16")
        self.run_block = backbone.run_block
        if config.compile and config.impl == "fast":
            self.run_block = torch.compile(backbone.run_block)
        self._one_pass = config.one_pass
        self.start_layer = 0  # no training before this layer (set by repair() from the original model)

    # -- helpers --------------------------------------------------------------------------
    def autocast(self):
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def one_pass(self, pixels: torch.Tensor) -> bool:
        if self._one_pass is not None:
            return self._one_pass
        if self.device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(self.device)
        tokens = pixels.shape[0] * (pixels.shape[-2] // self.backbone.patch_size) * (pixels.shape[-1] // self.backbone.patch_size)
        # ~24 saved activations of width D per token and block (bf16), plus attention if not fused
        need = tokens * self.backbone.embed_dim * 2 * 24 * self.backbone.depth
        return need < 0.4 * free

    def window(self, layer: int) -> tuple[int, int]:
        return max(0, layer - self.config.limit_layers + 1), layer

    def _detect(self, grid: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens to pull, their count, whether the layer qualifies) per image.

        A layer qualifies with ``rule.skip_less_than`` defects, or when a ``weak_defects`` share of
        its tokens (at least 3, above the μ+kσ noise tail) are |cos| outliers that the norm gate
        rejects: defects the repair has weakened. They are pulled too, so a repair finishes what
        it started. Never before ``start_layer``."""
        rule, weak_share = self.config.rule, self.config.weak_defects
        found = detect_layer(rule, grid, self.directions[layer], layer)
        qual = found.defects.flatten(1).sum(dim=1) >= rule.skip_less_than
        pull = found.defects
        if weak_share:
            pull = found.defects | found.gate_rejected
            needed = max(WEAK_MIN, math.ceil(weak_share * grid.shape[1] * grid.shape[2]))
            qual = qual | (pull.flatten(1).sum(dim=1) >= needed)
        if layer < self.start_layer:
            qual = torch.zeros_like(qual)
        return pull, pull.flatten(1).sum(dim=1), qual

    @torch.no_grad()
    def original_grid(self, pixels: torch.Tensor, layer: int) -> torch.Tensor:
        """Patch tokens of the unrepaired model at ``layer`` (the Gram anchor)."""
        with self.handle.mode("original"), self.autocast():
            x, ctx = self.backbone.embed(pixels)
            for j in range(layer + 1):
                x = self.run_block(j, x, ctx)
            return self.backbone.patch_grid(x, ctx).float()

    def _image_losses(self, grid: torch.Tensor, mask: torch.Tensor, layer: int, pixels: torch.Tensor | None) -> torch.Tensor:
        c = self.config
        losses = neighbour_loss(grid, self.directions[layer], mask, c.kernel, c.tau, c.rule.border, c.loss_along_weight())
        if self.config.gram_weight > 0 and pixels is not None:
            anchor = self.original_grid(pixels, layer)
            grams = [gram_loss(grid[b][~mask[b]], anchor[b][~mask[b]]) for b in range(grid.shape[0])]
            losses = losses + self.config.gram_weight * torch.stack(grams)
        return losses

    # -- the step -------------------------------------------------------------------------
    def step(self, pixels: torch.Tensor | None) -> StepResult:
        """One iteration on this rank's images (``None``: none usable; still joins the collectives)."""
        self.optimizer.zero_grad(set_to_none=True)
        res = StepResult()
        bad = False
        loss_sum = 0.0
        if pixels is not None and pixels.shape[0] > 0:
            pixels = pixels.to(self.device, self.backbone.dtype)
            if self.config.impl == "reference":
                bad, loss_sum = self._reference(pixels, res)
            else:
                bad, loss_sum = self._fast(pixels, res)
        self._apply(res, bad, loss_sum)
        return res

    def _reference(self, pixels: torch.Tensor, res: StepResult) -> tuple[bool, float]:
        """The reference loop, one image at a time (batch size 1 in the reference)."""
        bad, loss_sum = False, 0.0
        self.handle.set_mode("reference")
        try:
            for b in range(pixels.shape[0]):
                px = pixels[b : b + 1]
                hit = None
                with torch.enable_grad():
                    x, ctx = self.backbone.embed(px)
                    for j in range(self.backbone.depth):
                        x = self.backbone.run_block(j, x, ctx)
                        grid = self.backbone.patch_grid(x, ctx)
                        mask, counts, qual = self._detect(grid, j)
                        if bool(qual[0]):
                            hit = (j, grid, mask, int(counts[0]))
                            break
                if hit is None:
                    res.skipped.append(True)
                    res.image_layers.append(-1)
                    continue
                layer, grid, mask, count = hit
                res.skipped.append(False)
                res.image_layers.append(layer)
                with torch.enable_grad():
                    loss = self._image_losses(grid, mask, layer, px)[0]
                res.layers.append(layer)
                res.defects.append(count)
                res.losses.append(float(loss.detach()))
                if not torch.isfinite(loss):
                    bad = True
                    continue
                loss_sum += float(loss.detach())
                earlier = [p.grad for p in self.params]  # other images' gradients: not this window's to drop
                for p in self.params:
                    p.grad = None
                loss.backward()
                start, _ = self.window(layer)
                for p in self.handle.block_parameters(0, start - 1):
                    p.grad = None  # the reference drops gradients outside the window
                for p, g in zip(self.params, earlier):
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad + g
        finally:
            self.handle.set_mode("fast")
        return bad, loss_sum

    def _search(self, pixels: torch.Tensor, grad: bool) -> tuple[list[_Hit], object]:
        bb, limit = self.backbone, self.config.limit_layers
        hits: list[_Hit] = []
        inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.set_grad_enabled(grad), self.autocast():
            x, ctx = bb.embed(pixels)
            active = torch.arange(pixels.shape[0], device=self.device)
            for j in range(bb.depth):
                if not grad:
                    inputs[j] = (x, active)
                    inputs.pop(j - limit, None)
                x = self.run_block(j, x, ctx)
                grid = bb.patch_grid(x, ctx)
                mask, counts, qual = self._detect(grid, j)
                if not bool(qual.any()):
                    continue
                hit = _Hit(j, active[qual], grid[qual], mask[qual], counts[qual].tolist())
                if not grad:
                    xs, act_s = inputs[self.window(j)[0]]
                    hit.x_start = xs[torch.searchsorted(act_s, hit.images)]
                hits.append(hit)
                if bool(qual.all()):
                    break
                x, active = x[~qual], active[~qual]
        return hits, ctx

    def _fast(self, pixels: torch.Tensor, res: StepResult) -> tuple[bool, float]:
        one_pass = self.one_pass(pixels)
        hits, ctx = self._search(pixels, grad=one_pass)
        hit_of = {int(i): h for h in hits for i in h.images}
        res.skipped = [b not in hit_of for b in range(pixels.shape[0])]
        res.image_layers = [hit_of[b].layer if b in hit_of else -1 for b in range(pixels.shape[0])]
        bad, loss_sum = False, 0.0
        for k, hit in enumerate(hits):
            start, stop = self.window(hit.layer)
            px = pixels[hit.images] if self.config.gram_weight > 0 else None
            with torch.enable_grad():
                if one_pass:
                    grid = hit.grid
                else:
                    with self.autocast():
                        x = hit.x_start
                        for j in range(start, stop + 1):
                            x = self.run_block(j, x, ctx)
                        grid = self.backbone.patch_grid(x, ctx)
                losses = self._image_losses(grid, hit.mask, hit.layer, px)
            res.layers += [hit.layer] * len(hit.counts)
            res.defects += hit.counts
            res.losses += losses.detach().float().cpu().tolist()
            if not bool(torch.isfinite(losses).all()):
                bad = True
                continue
            loss_sum += float(losses.detach().sum())
            total = losses.sum()
            if one_pass:
                total.backward(inputs=self.handle.block_parameters(start, stop), retain_graph=k < len(hits) - 1)
            else:
                total.backward()
        return bad, loss_sum

    # -- the update -----------------------------------------------------------------------
    @torch.no_grad()
    def _apply(self, res: StepResult, bad: bool, loss_sum: float) -> None:
        """Sum gradients over ranks, divide by the number of images with defects, guard, step."""
        params = self.params
        n_local = len(res.losses)
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float() for p in params])
        head = torch.tensor([float(n_local), float(bad), loss_sum, float(sum(res.defects))], device=self.device)
        if self.dist.enabled:
            buf = self.dist.all_reduce_sum(torch.cat([head, present, grads]))
            head, present, grads = buf[:4], buf[4 : 4 + len(params)], buf[4 + len(params) :]
        n, n_bad, total = int(head[0].item()), head[1].item(), head[2].item()
        res.contributing, res.total_defects = n, int(head[3].item())
        if n == 0:
            return
        res.loss = total / n if math.isfinite(total) else float("nan")
        if n_bad > 0 or not bool(torch.isfinite(grads).all()):
            res.nonfinite = True
            self.optimizer.zero_grad(set_to_none=True)
            log.warning("non-finite loss or gradient: step skipped (layers %s)", sorted(set(res.layers)))
            return
        offset = 0
        for p, has in zip(params, present.tolist()):
            size = p.numel()
            p.grad = (grads[offset : offset + size].view_as(p) / n).to(p.dtype) if has > 0 else None
            offset += size
        self.optimizer.step()
        res.stepped = True

    # -- optimiser state (for checkpoints) --------------------------------------------------
    def momentum_state(self) -> dict[str, torch.Tensor]:
        out = {}
        for tp in self.handle.parts:
            buf = self.optimizer.state.get(tp.eps, {}).get("momentum_buffer")
            if buf is not None:
                out[tp.key] = buf.detach().clone()
        return out

    def load_momentum_state(self, state: dict[str, torch.Tensor]) -> None:
        by_key = {tp.key: tp.eps for tp in self.handle.parts}
        unknown = sorted(set(state) - set(by_key))
        if unknown:
            raise ValueError(f"momentum buffers for unknown parameters {unknown[:3]}")
        for key, buf in state.items():
            p = by_key[key]
            self.optimizer.state[p]["momentum_buffer"] = buf.to(p.device, p.dtype).clone()
