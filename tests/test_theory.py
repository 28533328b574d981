"""Theory: Gaussian quadrature, the closed-form hidden map, block matrices and defect directions."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from helpers.models import tiny_vit
from scipy import integrate
from scipy.special import ndtr
from torch import nn

from sinder import theory
from sinder.backbones.timm_vit import TimmViTBackbone
from sinder.errors import ConfigError
from sinder.gaussian import gaussian_expectation

ACTS = {
    "gelu": dict(act_layer=nn.GELU),
    "gelu_tanh": dict(act_layer=partial(nn.GELU, approximate="tanh")),
    "quick_gelu": dict(act_layer="quick_gelu"),
    "swiglu": dict(mlp_layer="swiglu", act_layer=nn.SiLU),
}


def act_vit(activation: str = "gelu", dim: int = 48, depth: int = 3, mlp_ratio: float = 4.0, seed: int = 0) -> TimmViTBackbone:
    """The shared tiny ViT with one of the activations the theory linearises (LayerScale 0.1)."""
    import timm

    kw = dict(ACTS[activation])
    if kw.get("mlp_layer") == "swiglu":
        kw["mlp_layer"] = timm.layers.SwiGLUPacked
    return tiny_vit(dim=dim, depth=depth, heads=4, mlp_ratio=mlp_ratio, init_values=0.1, seed=seed, spec=f"test-{activation}", **kw)


def gaussian_quad(fn, b: float, s: float) -> float:
    """Reference E[fn(h)], h ~ N(b, s²), by adaptive quadrature on pieces."""
    if s == 0:
        return float(fn(np.array(b)))
    dens = lambda h: float(fn(np.array(h))) * math.exp(-0.5 * ((h - b) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    cuts = sorted({-np.inf, -60.0, -20.0, -5.0, -1.0, 0.0, 1.0, 5.0, 20.0, 60.0, np.inf, *(b + s * k for k in (-12, -3, 0, 3, 12))})
    return sum(integrate.quad(dens, lo, hi, limit=500, epsabs=1e-15, epsrel=1e-13)[0] for lo, hi in zip(cuts, cuts[1:]))


def numpy_fn(torch_fn):
    return lambda h: torch_fn(torch.as_tensor(h, dtype=torch.float64)).numpy()


# -- quadrature ------------------------------------------------------------------------------

SLOPES = {
    "gelu'": (theory._gelu_slope, theory.STEP),
    "gelu_tanh'": (theory._gelu_tanh_slope, theory.STEP),
    "quick_gelu'": (theory._quick_gelu_slope, theory.STEP),
    "silu'": (theory._silu_slope, theory.STEP),
    "silu": (torch.nn.functional.silu, theory.RAMP),
    "silu''": (theory._silu_curvature, theory.FLAT),
}
STDS = [0.0, 0.3, 0.75, 0.76, 2.0, 10.0, 100.0]
MEANS = [-30.0, -3.0, -0.5, 0.0, 1.0, 30.0]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the reference at |h| → ∞
@pytest.mark.parametrize("name", list(SLOPES))
def test_gaussian_expectation_matches_adaptive_quadrature(name):
    # 64-node Gauss–Hermite alone is off by ~5e-2 at σ = 10; the hybrid rule must not be.
    fn, tails = SLOPES[name]
    b, s = np.meshgrid(MEANS, STDS)
    got = gaussian_expectation(fn, torch.tensor(b), torch.tensor(s), *tails).numpy()
    ref = np.vectorize(lambda bb, ss: gaussian_quad(numpy_fn(fn), bb, ss))(b, s)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-11)


def test_gelu_slope_matches_closed_form():
    # E[Φ(h) + hφ(h)] = Φ(b/r) + b·φ(b/r)/r³, r = √(1 + s²); includes the negative-slope region.
    b = torch.linspace(-6, 4, 41, dtype=torch.float64)[:, None].expand(41, 9)
    s = torch.tensor([0, 0.1, 0.5, 0.75, 0.8, 1.5, 4, 20, 300], dtype=torch.float64).expand(41, 9)
    r = torch.sqrt(1 + s * s)
    exact = torch.special.ndtr(b / r) + b * torch.exp(-0.5 * (b / r) ** 2) / math.sqrt(2 * math.pi) / r**3
    got = gaussian_expectation(theory._gelu_slope, b, s, *theory.STEP)
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-13)
    assert got[18, 1] < -0.12  # b = −1.5, σ = 0.1: GELU's negative slope survives averaging


@pytest.mark.parametrize(
    "name,fn,slope",
    [
        ("gelu", torch.nn.functional.gelu, theory._gelu_slope),
        ("gelu_tanh", lambda h: torch.nn.functional.gelu(h, approximate="tanh"), theory._gelu_tanh_slope),
        ("quick_gelu", lambda h: __import__("timm").layers.QuickGELU()(h), theory._quick_gelu_slope),
        ("silu", torch.nn.functional.silu, theory._silu_slope),
        ("silu'", theory._silu_slope, theory._silu_curvature),
    ],
)
def test_hand_derivatives_match_autograd(name, fn, slope):
    h = torch.linspace(-12, 12, 2001, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(fn(h).sum(), h)
    torch.testing.assert_close(slope(h.detach()), grad, rtol=0, atol=1e-13)


# -- the hidden map Â ----------------------------------------------------------------------


def set_mlp_in(backbone: TimmViTBackbone, generator: torch.Generator) -> None:
    """fc1 rows with norms 0..3 and biases down to −4, one all-zero row per slice."""
    view = backbone.block_view(0)
    with torch.no_grad():
        for part in view.mlp_in:
            rows, d = part.weight.shape
            w = torch.randn(rows, d, generator=generator)
            norms = torch.linspace(0.0, 3.0, rows)[torch.randperm(rows, generator=generator)]
            w = w / w.norm(dim=1, keepdim=True) * norms[:, None]
            b = torch.linspace(-4.0, 2.0, rows)[torch.randperm(rows, generator=generator)]
            part.module.weight[part.rows] = w
            part.module.bias[part.rows] = b


@pytest.mark.parametrize("activation", list(ACTS))
def test_closed_form_hidden_map_matches_brute_force_expectation(activation):
    # Â = E[f(Wx + b)·xᵀ] (since E[xxᵀ] = I): a sampled mean must agree entrywise within its
    # standard error, so the normalised errors z must look like N(0, 1).
    bb = act_vit(activation, dim=32, depth=1, mlp_ratio=2.0)
    set_mlp_in(bb, torch.Generator().manual_seed(1))
    view = bb.block_view(0)
    exact = theory.hidden_linear_map(view)
    hidden = theory.hidden_function(view)
    gen = torch.Generator().manual_seed(2)
    n, total, total_sq = 0, 0.0, 0.0
    for _ in range(8):
        x = torch.randn(50_000, 32, generator=gen, dtype=torch.float64)
        h = hidden(x)
        total, total_sq, n = total + h.T @ x, total_sq + (h * h).T @ (x * x), n + x.shape[0]
    mean = total / n
    se = torch.sqrt((total_sq / n - mean**2) / n)
    live = se > 0  # zero rows of W with f(b) = 0 give exactly-zero columns
    z = ((mean - exact) / se)[live]
    # entries share samples, so the mean of z² scatters ~±0.2 around 1; a wrong formula gives ≫ 1
    assert 0.7 < float((z**2).mean()) < 1.4, float((z**2).mean())
    assert float(z.abs().max()) < 5.0
    assert torch.equal(exact[~live], torch.zeros_like(exact[~live]))


def test_negative_bias_gives_negative_gelu_slope():
    # The NOTES' failure case: a gate with a strongly negative bias has a negative expected slope.
    bb = act_vit("gelu", dim=32, depth=1)
    view = bb.block_view(0)
    with torch.no_grad():
        view.mlp_in[0].module.weight[0] = 0.0
        view.mlp_in[0].module.weight[0, 0] = 0.2
        view.mlp_in[0].module.bias[0] = -2.0
    row = theory.hidden_linear_map(view)[0]
    w = view.mlp_in[0].module.weight[0, 0].item()  # 0.2 as stored in float32
    expected = w * gaussian_quad(numpy_fn(theory._gelu_slope), -2.0, w)
    assert expected < -0.015
    assert row[0].item() == pytest.approx(expected, rel=1e-10)
    assert float(row[1:].abs().max()) == 0.0


def test_montecarlo_error_shrinks_as_inverse_sqrt_samples():
    # Averaged over 6 seeds: one draw of a 64×32 map scatters ~±20% (the no-intercept fit puts
    # the hidden mean into a rank-1 error term with only d degrees of freedom).
    bb = act_vit("gelu", dim=32, depth=1, mlp_ratio=2.0)
    set_mlp_in(bb, torch.Generator().manual_seed(3))
    view = bb.block_view(0)
    exact = theory.hidden_linear_map(view)

    def rel_error(samples):
        errs = [(theory.hidden_linear_map(view, "montecarlo", samples, seed) - exact).norm() / exact.norm() for seed in range(6)]
        return float(torch.stack(errs).mean())

    sizes = [2_000, 8_000, 32_000, 128_000]
    errors = [rel_error(n) for n in sizes]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    slope = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    assert -0.56 < slope < -0.44, (errors, slope)
    assert all(1.5 < r < 2.6 for r in ratios), (errors, ratios)
    assert errors[-1] < 0.03


def test_montecarlo_equals_lstsq_and_is_seeded():
    bb = act_vit("quick_gelu", dim=32, depth=1, mlp_ratio=2.0)
    view = bb.block_view(0)
    a = theory.hidden_linear_map(view, "montecarlo", samples=3000, seed=5)
    b = theory.hidden_linear_map(view, "montecarlo", samples=3000, seed=5)
    c = theory.hidden_linear_map(view, "montecarlo", samples=3000, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3000, 32, generator=gen, dtype=torch.float64)  # one chunk: the same draws
    ref = torch.linalg.lstsq(x, theory.hidden_function(view)(x)).solution.T
    torch.testing.assert_close(a, ref, rtol=1e-9, atol=1e-12)


def test_invalid_method_is_a_config_error():
    bb = act_vit("gelu", dim=32, depth=1)
    with pytest.raises(ConfigError):
        theory.linearise(bb, method="lstsq")
    with pytest.raises(ConfigError):
        theory.hidden_linear_map(bb.block_view(0), "montecarlo", samples=0)


# -- block matrices and composition -----------------------------------------------------------


def randomise_norms_and_scales(bb: TimmViTBackbone, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in bb.model.blocks:
            for p in (blk.norm1.weight, blk.norm2.weight, blk.ls1.gamma, blk.ls2.gamma):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)


def test_matrices_match_hand_formula_and_compose():
    bb = act_vit("gelu", dim=48, depth=3)
    randomise_norms_and_scales(bb)
    lin = theory.linearise(bb)
    d = 48
    eye = torch.eye(d, dtype=torch.float64)
    P = eye - torch.ones(d, d, dtype=torch.float64) / d
    g = eye
    for i, blk in enumerate(bb.model.blocks):
        dbl = lambda t: t.detach().double()
        wv = dbl(blk.attn.qkv.weight)[2 * d :]
        A = eye + torch.diag(dbl(blk.ls1.gamma)) @ dbl(blk.attn.proj.weight) @ wv @ torch.diag(dbl(blk.norm1.weight)) @ P
        w1, b1 = dbl(blk.mlp.fc1.weight), dbl(blk.mlp.fc1.bias)
        r = torch.sqrt(1 + (w1 * w1).sum(1))  # E[gelu′(h)], h ~ N(b, s²), in closed form
        slope = torch.tensor(ndtr((b1 / r).numpy())) + b1 * torch.exp(-0.5 * (b1 / r) ** 2) / math.sqrt(2 * math.pi) / r**3
        C = eye + torch.diag(dbl(blk.ls2.gamma)) @ dbl(blk.mlp.fc2.weight) @ torch.diag(slope) @ w1 @ torch.diag(dbl(blk.norm2.weight)) @ P
        torch.testing.assert_close(lin.attention[i], A, rtol=0, atol=1e-12)
        torch.testing.assert_close(lin.mlp[i], C, rtol=0, atol=1e-12)
        torch.testing.assert_close(lin.blocks[i], C @ A, rtol=0, atol=1e-12)
        g = C @ A @ g
        torch.testing.assert_close(lin.composed[i], g, rtol=0, atol=1e-11)
        u, s, _ = np.linalg.svd(g.numpy())
        assert abs(float(lin.directions[i].double() @ torch.from_numpy(u[:, 0]))) > 1 - 1e-6
        np.testing.assert_allclose(lin.singular_values[i].numpy(), s[:3], rtol=1e-12)


def test_rms_norm_branch_has_no_centring():
    # RMSNorm does not subtract the token mean, so its branch gets no P.
    bb = act_vit("gelu", dim=48, depth=1)
    blk = bb.model.blocks[0]
    blk.norm1 = nn.RMSNorm(48)
    with torch.no_grad():
        blk.norm1.weight.uniform_(0.5, 1.5)
    dbl = lambda t: t.detach().double()
    A = torch.eye(48, dtype=torch.float64) + torch.diag(dbl(blk.ls1.gamma)) @ dbl(blk.attn.proj.weight) @ dbl(blk.attn.qkv.weight)[
        96:
    ] @ torch.diag(dbl(blk.norm1.weight))
    torch.testing.assert_close(theory.attention_matrix(bb.block_view(0)), A, rtol=0, atol=1e-12)


def test_keep_matrices_false_keeps_only_directions():
    bb = act_vit("swiglu", dim=48, depth=2)
    full = theory.linearise(bb)
    slim = theory.linearise(bb, keep_matrices=False)
    assert slim.attention is slim.mlp is slim.blocks is slim.composed is None
    assert torch.equal(full.directions, slim.directions)
    assert torch.equal(full.singular_values, slim.singular_values)
    assert full.directions.dtype == torch.float32 and full.singular_values.shape == (2, 3)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_directions_unit_deterministic_sign_fixed(activation):
    bb = act_vit(activation, dim=48, depth=3)
    first = theory.defect_directions(bb)
    second = theory.defect_directions(bb)
    assert torch.equal(first, second)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(3), rtol=0, atol=1e-6)
    top = first.gather(1, first.abs().argmax(dim=1, keepdim=True))
    assert (top > 0).all()


def test_exact_and_montecarlo_linearisations_agree():
    bb = act_vit("gelu", dim=48, depth=2)
    randomise_norms_and_scales(bb)
    exact = theory.linearise(bb)
    mc = theory.linearise(bb, "montecarlo", samples=40_000)
    assert mc.method == "montecarlo"
    for ge, gm, ce, cm in zip(exact.composed, mc.composed, exact.mlp, mc.mlp):
        assert (ce - cm).norm() / (ce - torch.eye(48, dtype=torch.float64)).norm() < 0.05
        assert (ge - gm).norm() / ge.norm() < 0.02


# -- planted rank-1 amplification -------------------------------------------------------------


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_planted_rank_one_amplification_is_found(activation):
    # Block k's MLP gets neurons that read u and write g·u, so C_k ≈ I + c·uuᵀ: ν_i = u for i ≥ k.
    d, k, units = 48, 2, 8
    bb = act_vit(activation, dim=d, depth=5)
    gen = torch.Generator().manual_seed(7)
    u = torch.randn(d, generator=gen)
    u = u - u.mean()  # P·u = u
    u = u / u.norm()
    view = bb.block_view(k)
    with torch.no_grad():
        for part in view.mlp_in:  # swiglu: gate and value both read u
            for r in range(part.rows.start, part.rows.start + units):
                part.module.weight[r] = 2.0 * u
                part.module.bias[r] = 0.0 if activation == "gelu" else 1.0
        for j in range(units):
            view.mlp_out.module.weight[:, j] = 100.0 / units * u
    lin = theory.linearise(bb)
    cos = (lin.directions.double() @ u.double()).abs()
    assert (cos[:k] < 0.5).all(), cos
    assert (cos[k:] > 0.99).all(), cos
    gap = lin.singular_values[k:, 0] / lin.singular_values[k:, 1]
    assert (gap > 3).all(), gap
