"""σ-parametrisation of a backbone's block linears, and folding back to plain weights.

Every ``nn.Linear`` a block view names is factorised per row slice, W = U·diag(σ)·Vᵀ (SVD in
float64, stored in the model dtype), with U, V frozen and an additive correction ε (init 0)
to σ as the only trainable tensor. q and k never train (in a fused qkv only the v rows do);
a gated MLP input fused in one Linear ([gate; value]) is one SVD, as the reference does for w12.

Factorising is lazy: a part gets its SVD when a gradient first reaches its ε (or when ε is set
from outside, e.g. on resume). Until then ε is 0 and the part computes with W₀ itself, so blocks
no window reaches cost neither the SVD time nor the memory of U and V (at ViT-L that is most of
the start-up, and about a gigabyte).

The Linear is replaced in its parent by a :class:`SingularLinear` stand-in, so the model's own
block code runs unchanged; the stand-in exposes ``weight``/``bias``/``in_features`` for code
that reads them (timm Eva calls ``F.linear(x, qkv.weight, ...)``). :meth:`SingularModel.fold`
writes W₀ + U·diag(ε)·Vᵀ (= U·diag(σ+ε)·Vᵀ, computed in float64) into the original Linear
objects and puts them back: module types and state-dict keys are exactly the original ones.

Three ways to evaluate the same function (``SingularModel.mode``):
  * ``reference`` — the reference code: ``U @ diag(σ+ε) @ Vᵀ`` rebuilt on every call, q/k too.
  * ``fast`` — per call, whichever is cheaper in FLOPs: three matmuls x·V, ·(σ+ε), ·Uᵀ (no
    weight is formed; dε = Σ_t (xV)⊙(gU)), or a folded weight cached until ε changes whose
    backward gives dε_j = u_jᵀ·dW·v_j.
  * ``original`` — the untouched weights (for before/after comparisons and Gram anchoring).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..backbones.view import LinearSlice
from ..errors import ModelSpecError

log = logging.getLogger(__name__)

Mode = Literal["fast", "reference", "original"]
MODES = ("fast", "reference", "original")


@dataclass
class Part:
    """A contiguous row range of one Linear: factorised (``U``, ``S``, ``Vt``) and maybe trainable."""

    start: int
    stop: int
    key: str | None  # canonical name of a trainable part ("blocks.3.v"), None when frozen
    index: int  # position in the stand-in's buffers/parameters

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)


def svd_tall(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD W = U·diag(S)·Vᵀ, taken of Wᵀ when W is wide: LAPACK is 2–3.6× faster on the tall
    orientation (float64, 2 threads: the MLP output of ViT-L, 1024×4096, 1.66 s → 0.68 s; of ViT-g,
    1536×4096, 3.30 s → 1.62 s). The same factors up to the sign of each (u_j, v_j) pair, which
    U·diag(σ+ε)·Vᵀ does not see."""
    if w.shape[0] >= w.shape[1]:
        return torch.linalg.svd(w, full_matrices=False)
    v, s, ut = torch.linalg.svd(w.T, full_matrices=False)
    return ut.T, s, v.T


class _EpsGrad(torch.autograd.Function):
    """Pass a cached folded weight through; backward maps dW to dε_j = u_jᵀ·dW_rows·v_j."""

    @staticmethod
    def forward(ctx, weight, module, *eps):  # noqa: D401 - autograd signature
        ctx.module = module
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad_w):
        m: SingularLinear = ctx.module
        grads = []
        for part in m.trainable_parts:
            u, vt = m.factors(part)
            g = grad_w[part.rows].to(u.dtype)
            grads.append(((u.T @ g) * vt).sum(dim=1))
        return (None, None, *grads)


class SingularLinear(nn.Module):
    """Stand-in for an ``nn.Linear`` whose row slices are W = U·diag(σ+ε)·Vᵀ."""

    def __init__(self, linear: nn.Linear, parts: list[tuple[int, int, str | None]], factor_frozen: bool = False) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self._original = (linear,)  # a tuple: not a submodule, put back by fold
        self.weight_orig = linear.weight
        self.bias = linear.bias
        self.mode: Mode = "fast"
        self.parts: list[Part] = []
        self._cache: torch.Tensor | None = None
        self._cache_key: tuple | None = None
        self._untouched_version: dict[int, int] = {}  # ε's version while it is still its initial 0
        w = linear.weight.detach()
        covered = 0
        for start, stop, key in sorted(parts):
            if start < covered:
                raise ModelSpecError(f"overlapping row slices in a {linear.out_features}-row linear")
            for a, b, k in ((covered, start, None), (start, stop, key)):
                if b <= a or (k is None and not factor_frozen):
                    continue
                self._add_part(w, a, b, k)
            covered = stop
        if covered < self.out_features and factor_frozen:
            self._add_part(w, covered, self.out_features, None)
        self.trainable_parts = [p for p in self.parts if p.key is not None]
        # contiguous segments of the output: (start, stop, part or None for pass-through rows)
        self._segments: list[tuple[int, int, Part | None]] = []
        pos = 0
        for p in self.parts:
            if p.start > pos:
                self._segments.append((pos, p.start, None))
            self._segments.append((p.start, p.stop, p))
            pos = p.stop
        if pos < self.out_features:
            self._segments.append((pos, self.out_features, None))

    def _add_part(self, w: torch.Tensor, start: int, stop: int, key: str | None) -> None:
        i = len(self.parts)
        if key is not None:
            rank = min(stop - start, w.shape[1])
            eps = nn.Parameter(torch.zeros(rank, dtype=w.dtype, device=w.device))
            self.register_parameter(f"eps_{i}", eps)
            self._untouched_version[i] = eps._version
        self.parts.append(Part(start, stop, key, i))

    def _factorise(self, part: Part) -> None:
        w = self.weight_orig.detach()
        u, s, vt = svd_tall(w[part.rows].double())
        for name, t in (("U", u), ("S", s), ("Vt", vt)):
            self.register_buffer(f"{name}_{part.index}", t.to(w.dtype).contiguous(), persistent=False)

    def is_factorised(self, part: Part) -> bool:
        return f"U_{part.index}" in self._buffers

    def untouched(self, part: Part) -> bool:
        """ε is still its initial 0 and nothing has factorised the part: it computes with W₀'s rows."""
        if self.is_factorised(part):
            return False
        return part.key is None or self.eps(part)._version == self._untouched_version[part.index]

    def all_untouched(self) -> bool:
        return all(self.untouched(p) for p in self.trainable_parts)

    # -- pieces ---------------------------------------------------------------------------
    @property
    def original(self) -> nn.Linear:
        return self._original[0]

    def factors(self, part: Part) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_factorised(part):
            self._factorise(part)
        return getattr(self, f"U_{part.index}"), getattr(self, f"Vt_{part.index}")

    def sigma(self, part: Part) -> torch.Tensor:
        if not self.is_factorised(part):
            self._factorise(part)
        return getattr(self, f"S_{part.index}")

    def eps(self, part: Part) -> nn.Parameter:
        return getattr(self, f"eps_{part.index}")

    def eps_list(self) -> list[nn.Parameter]:
        return [self.eps(p) for p in self.trainable_parts]

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(e.requires_grad for e in self.eps_list())

    # -- weights --------------------------------------------------------------------------
    def _reference_weight(self) -> torch.Tensor:
        rows = []
        for start, stop, part in self._segments:
            if part is None:
                rows.append(self.weight_orig[start:stop])
                continue
            u, vt = self.factors(part)
            s = self.sigma(part) + self.eps(part) if part.key is not None else self.sigma(part)
            rows.append(u @ torch.diag(s) @ vt)  # literally the reference's rebuild
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)

    def _cache_valid(self) -> bool:
        return self._cache_key == self._key()

    def _key(self) -> tuple:
        return tuple(e._version for e in self.eps_list()) + (self.weight_orig._version,)

    def folded_weight(self) -> torch.Tensor:
        """W₀ rows where frozen or untouched, U·diag(σ+ε)·Vᵀ where trained; cached until ε changes
        (no graph). While every part is untouched this is W₀ itself: no copy is held."""
        if self.all_untouched():
            self._cache = self._cache_key = None
            return self.weight_orig.detach()
        if not self._cache_valid():
            self._cache = None  # the stale copy goes before the new one is built
            with torch.no_grad():
                w = self.weight_orig.detach().clone()
                for part in self.trainable_parts:
                    if self.untouched(part):
                        continue
                    u, vt = self.factors(part)
                    w[part.rows] = (u * (self.sigma(part) + self.eps(part))) @ vt
            self._cache, self._cache_key = w, self._key()
        return self._cache

    def _fast_weight(self) -> torch.Tensor:
        w = self.folded_weight()
        if self._needs_grad():
            return _EpsGrad.apply(w, self, *self.eps_list())
        return w

    @property
    def weight(self) -> torch.Tensor:
        if self.mode == "original" or not self.trainable_parts:
            return self.weight_orig
        if self.mode == "reference":
            return self._reference_weight()
        return self._fast_weight()

    # -- forward --------------------------------------------------------------------------
    def _factored_is_cheaper(self, x: torch.Tensor) -> bool:
        if self.all_untouched():
            return False  # W₀ is the weight: nothing to rebuild, and the backward factorises what it reaches
        tokens = x.numel() // self.in_features
        d_in = self.in_features
        factored = plain = rebuild = 0
        for p in self.trainable_parts:
            rows, r = p.stop - p.start, self.eps(p).numel()
            factored += tokens * r * (d_in + rows)
            plain += tokens * d_in * rows
            rebuild += d_in * rows * r
        cached = rebuild if not self._cache_valid() else 0
        if self._needs_grad():  # forward + backward (dx), vs rebuild + 3 GEMMs (y, dx, dW) + dε
            return 2 * factored < cached + 3 * plain + rebuild
        return factored < cached + plain

    def _factored(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for start, stop, part in self._segments:
            bias = None if self.bias is None else self.bias[start:stop]
            if part is None or part.key is None:
                outs.append(F.linear(x, self.weight_orig[start:stop], bias))
                continue
            u, vt = self.factors(part)
            h = F.linear(x, vt) * (self.sigma(part) + self.eps(part))  # fp32 scale: dε summed in fp32 under autocast
            outs.append(F.linear(h, u, bias))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fast" and self.trainable_parts and self._factored_is_cheaper(x):
            return self._factored(x)
        return F.linear(x, self.weight, self.bias)

    @torch.no_grad()
    def fold_into_original(self) -> nn.Linear:
        """Write W₀ + U·diag(ε)·Vᵀ (float64) into the original Linear and return it (untouched: W₀ as it is)."""
        lin = self.original
        if self.all_untouched():
            return lin
        w = self.weight_orig.detach().double().clone()
        for part in self.trainable_parts:
            if self.untouched(part):
                continue
            u, vt = self.factors(part)
            w[part.rows] += (u.double() * self.eps(part).double()) @ vt.double()
        lin.weight.data.copy_(w.to(lin.weight.dtype))
        return lin

    def extra_repr(self) -> str:
        parts = ", ".join(f"{p.key or 'frozen'}[{p.start}:{p.stop}]" for p in self.parts)
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}, parts=({parts})"


@dataclass
class TrainablePart:
    """One trainable ε: its canonical key, block index, owning stand-in and parameter."""

    key: str
    block: int
    module: SingularLinear
    part: Part
    label: str  # where it lives in the model: "blocks.3.attn.qkv[768:1152]", "blocks.3.mlp.fc2"

    @property
    def eps(self) -> nn.Parameter:
        return self.module.eps(self.part)


def _fuse(slices: tuple[LinearSlice, ...]) -> tuple[LinearSlice, ...]:
    """A gated MLP input fused in one Linear (timm GluMlp, official ``w12``) is one matrix: one SVD, as the reference."""
    if len(slices) < 2 or len({id(s.module) for s in slices}) != 1:
        return slices
    rows = sorted((s.rows.start, s.rows.stop) for s in slices)
    if any(a[1] != b[0] for a, b in pairwise(rows)):
        return slices
    return (LinearSlice(slices[0].module, slices[0].name, rows[0][0], rows[-1][1]),)


def _parents(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    out: dict[int, tuple[nn.Module, str]] = {}
    for mod in model.modules():
        for name, child in mod._modules.items():
            if child is not None:
                out[id(child)] = (mod, name)
    return out


class SingularModel:
    """A backbone whose block linears are σ-parametrised; ``fold()`` makes it plain again.

    Attaching freezes every parameter of the model (restored by ``fold``) and leaves only the ε
    corrections trainable: v (never q, k), proj, the MLP input(s) and output of every block.
    """

    def __init__(self, backbone: Backbone, factor_frozen: bool = False) -> None:
        self.backbone = backbone
        model = backbone.model
        self._requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        parents = _parents(model)
        if backbone.proxies() is not None:  # stand-ins sharing the model's parameters (open_clip)
            parents.update(_parents(backbone.proxies()))
        self.modules: list[SingularLinear] = []
        self.parts: list[TrainablePart] = []
        self._swapped: list[tuple[nn.Module, str, nn.Linear, SingularLinear]] = []
        self._folded = False
        model.requires_grad_(False)
        try:
            self._attach(backbone, parents, factor_frozen)
        except BaseException:
            self.fold()  # ε are all 0: the Linears swapped so far go back unchanged
            raise
        for tp in self.parts:
            tp.eps.requires_grad_(True)
        self.parts.sort(key=lambda tp: tp.block)  # stable: block order, then view order
        log.debug("σ-parametrised %d linears, %d trainable ε (%d values)", len(self.modules), len(self.parts), self.num_trainable())

    def _attach(self, backbone: Backbone, parents: dict, factor_frozen: bool) -> None:
        for i in range(backbone.depth):
            view = backbone.block_view(i)
            roles = [("q", view.q), ("k", view.k), ("v", view.v), ("proj", view.proj)]
            mlp_in = _fuse(view.mlp_in)
            roles += [(f"mlp_in.{j}" if len(mlp_in) > 1 else "mlp_in", s) for j, s in enumerate(mlp_in)]
            roles.append(("mlp_out", view.mlp_out))
            by_module: dict[int, tuple[nn.Linear, list]] = {}
            labels: dict[str, str] = {}
            for role, sl in roles:
                if not isinstance(sl.module, nn.Linear) or isinstance(sl.module, SingularLinear):
                    raise ModelSpecError(f"block {i} {role}: expected a plain nn.Linear, got {type(sl.module).__name__}")
                key = None if role in ("q", "k") else f"blocks.{i}.{role}"
                rows = sl.rows
                by_module.setdefault(id(sl.module), (sl.module, []))[1].append((rows.start, rows.stop, key))
                whole = rows.start == 0 and rows.stop == sl.module.out_features
                labels[key] = sl.name if whole else f"{sl.name}[{rows.start}:{rows.stop}]"
            for lin, parts in by_module.values():
                if all(k is None for _, _, k in parts):
                    continue  # a separate q or k projection: nothing trains there
                if id(lin) not in parents:
                    raise ModelSpecError(f"block {i}: a view linear is not a submodule of the model")
                parent, name = parents[id(lin)]
                stand_in = SingularLinear(lin, parts, factor_frozen=factor_frozen)
                setattr(parent, name, stand_in)
                self._swapped.append((parent, name, lin, stand_in))
                self.modules.append(stand_in)
                for p in stand_in.trainable_parts:
                    self.parts.append(TrainablePart(p.key, i, stand_in, p, labels[p.key]))

    # -- parameters -----------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return [tp.eps for tp in self.parts]

    def block_parameters(self, start: int, stop: int) -> list[nn.Parameter]:
        """ε of blocks ``start..stop`` (inclusive)."""
        return [tp.eps for tp in self.parts if start <= tp.block <= stop]

    def num_trainable(self) -> int:
        return sum(tp.eps.numel() for tp in self.parts)

    def eps_state(self) -> dict[str, torch.Tensor]:
        return {tp.key: tp.eps.detach().clone() for tp in self.parts}

    def sigma_state(self) -> dict[str, torch.Tensor]:
        """``<label>/sigma`` (σ) and ``<label>/delta`` (ε) per factorised trainable part, for reports
        (a part no gradient reached has ε = 0 and no SVD: it is left out rather than factorised here)."""
        out = {}
        for tp in self.parts:
            if tp.module.untouched(tp.part):
                continue
            out[f"{tp.label}/sigma"] = tp.module.sigma(tp.part).detach().float().cpu().contiguous()
            out[f"{tp.label}/delta"] = tp.eps.detach().float().cpu().contiguous()
        return out

    @torch.no_grad()
    def load_eps_state(self, state: dict[str, torch.Tensor]) -> None:
        keys = {tp.key for tp in self.parts}
        if set(state) != keys:
            missing, extra = sorted(keys - set(state))[:3], sorted(set(state) - keys)[:3]
            raise ModelSpecError(f"ε state does not fit this model (missing {missing}, unexpected {extra}); was it made for another model?")
        for tp in self.parts:
            src = state[tp.key]
            if src.shape != tp.eps.shape:
                raise ModelSpecError(f"ε {tp.key} has shape {tuple(src.shape)}, expected {tuple(tp.eps.shape)}")
            if tp.module.untouched(tp.part) and not bool(src.any()):
                continue  # still 0: the part stays untouched (no SVD on resume)
            tp.eps.copy_(src.to(tp.eps.device, tp.eps.dtype))

    # -- modes ----------------------------------------------------------------------------
    def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for m in self.modules:
            m.mode = mode

    @contextmanager
    def mode(self, mode: Mode) -> Iterator[None]:
        previous = self.modules[0].mode if self.modules else "fast"
        self.set_mode(mode)
        try:
            yield
        finally:
            self.set_mode(previous)

    # -- folding --------------------------------------------------------------------------
    @torch.no_grad()
    def fold(self) -> None:
        """Write U·diag(σ+ε)·Vᵀ into the original Linears, put them back, restore requires_grad."""
        if self._folded:
            return
        for parent, name, lin, stand_in in self._swapped:
            stand_in.fold_into_original()
            setattr(parent, name, lin)
        for p, flag in self._requires_grad:
            p.requires_grad_(flag)
        self._folded = True

    @property
    def folded(self) -> bool:
        return self._folded


def attach(backbone: Backbone, factor_frozen: bool = False) -> SingularModel:
    """σ-parametrise ``backbone`` in place (see :class:`SingularModel`)."""
    return SingularModel(backbone, factor_frozen=factor_frozen)
