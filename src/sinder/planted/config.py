"""What a planted model is made of: one typed config, and the zoo of named presets.

A name is ``NAME[@SIZE]``: ``planted:content`` is the ViT-S/14 preset, ``planted:content@L``
plants the same circuits in a ViT-L/14 (sizes S, B, L, g: the DINOv2 layouts).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..errors import ModelSpecError, require

Size = Literal["S", "B", "L", "g"]
# (timm name, timm name with 4 registers, overrides) per size; the giant layout (fused SwiGLU
# fc1 = [gate | value]) at other widths comes from overriding the giant's dimensions.
ARCHITECTURES = {
    "S": ("vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2", {"embed_dim": 384, "depth": 12, "num_heads": 6}),
    "B": ("vit_base_patch14_dinov2", "vit_base_patch14_reg4_dinov2", {"embed_dim": 768, "depth": 12, "num_heads": 12}),
    "L": ("vit_large_patch14_dinov2", "vit_large_patch14_reg4_dinov2", {"embed_dim": 1024, "depth": 24, "num_heads": 16}),
    "g": ("vit_giant_patch14_dinov2", "vit_giant_patch14_reg4_dinov2", {"embed_dim": 1536, "depth": 40, "num_heads": 24}),
}
GIANT, GIANT_REG = ARCHITECTURES["g"][:2]


@dataclass(frozen=True)
class PlantedConfig:
    """A planted-defect ViT, built deterministically from ``seed``.

    Circuits (see :mod:`sinder.planted.circuits`): an *ignition* neuron at block
    ``round(onset · depth)`` writes the defect direction u on the tokens it selects; *amplifier*
    neurons in every later block grow u on tokens that already carry it.

    ignition: ``marker`` ignites every token at ``markers`` positional cells (same cells in every
        image); ``content`` ignites only the low-texture patches among ``markers`` candidate cells,
        so positions and counts change from image to image, with unequal strengths.
    amplifier: ``pair`` (a dead-zone pair, odd in ⟨u, LN(x)⟩), ``feedback`` (one gate on u that
        writes more u: a partly repaired token can re-ignite) or ``bounded`` (the pair closed again
        above the dead zone: a hat, odd in ⟨u, LN(x)⟩, that writes u only where 0.5 < |⟨u, LN(x)⟩|
        < 3.5; its Gaussian-expected slope still makes the theory predict u, but a token that already
        carries u strongly is not grown: with ``ignition_suppress`` the defects stay low-norm).
    markers, marker_layout: how many marker (candidate) cells, and where: ``interior`` (random cells
        ≥ 2 from the edge, pairwise ≥ 3 apart where the grid allows), ``border`` (the 4 corners,
        ``markers`` − 6 random edge cells pairwise ≥ 2 apart, and 2 random interior cells) or
        ``clusters`` (groups of 3, 1, 2, 1, 2, … mutually adjacent cells, so a 3×3 window around a
        defect holds other defects; groups never adjacent to one another, cells ≥ 1 from the edge).
    u_noise: ordinary tokens carry a small random u component of this size (relative to the shared
        token norm at ViT-S; at other widths it is scaled so that it reads the same through
        LayerNorm), as a real network's would; 0 keeps u quiet (only the planted units write it).
    anisotropy: the patch embedding's output is stretched along a few random directions by this
        factor, so ordinary tokens are strongly anisotropic (as real ViT tokens are) and the |cos|
        rule finds a noise tail in layers without defects.
    strength_spread: marker norms vary by ± this fraction from cell to cell.
    early_feature: gain of dead-zone amplifiers on a stretched content direction in the blocks
        before the ignition; the theory then predicts that direction there, and the |cos| rule
        finds a noise tail of ordinary tokens (edges, bright patches) in those layers, as the
        reference did on an independently built model (0: none).
    ignition_units: the ignition in each ignition block is spread over this many MLP units that
        share ``ignition_gain``, their margins spread over ±25% of ``ignition_margin`` (the
        strongest is the ground truth's ignition unit): no single neuron writes the defect.
    ignition_path: ``mlp`` (the units above) or ``attention``: one head of the ignition block
        writes u instead. Its query and key read the marker m, so marker tokens attend to one
        another (the others to a sink on CLS); its value reads m and its output writes u. No MLP
        neuron writes the defect, which test-time registers assume (marker ignition only).
    ignition_blocks: the marker ignites u in this many consecutive blocks from the ignition block
        on (the first is the ground truth's ignition unit). A σ clamp caps each matrix on its own,
        so a defect fed by several blocks keeps part of its strength at a moderate γ.
    ignition_suppress: the ignition unit also removes this fraction of the token's shared
        component and of its marker (at a full-strength marker) as it writes u, so with a small
        ``ignition_gain`` a defect token is u plus little else: aligned with ν but *lower* in norm
        than its neighbours, as CLIP's low-norm artifacts (0: the unit writes u alone). Positional
        markers, one MLP unit in one block.
    spectrum_top, spectrum_decay: before the circuits are planted, give every block Linear (q, k,
        v, proj, fc1, fc2 each on its own) the heavy-tailed singular values
        ``spectrum_top · k^−spectrum_decay`` (k = 1, 2, …), keeping timm's random singular vectors.
        timm's init has every σ < 1.3, so a σ clamp at the paper's γ leaves ordinary weights alone;
        trained DINOv2 weights have many σ well above 2, and this brings that trade-off into the
        zoo (0: timm's init, as the other members).
    """

    size: Size = "S"
    swiglu: bool = False
    registers: bool = False
    img_size: int = 224
    seed: int = 0
    onset: float = 4 / 12
    ignition: Literal["marker", "content"] = "marker"
    amplifier: Literal["pair", "feedback", "bounded"] = "pair"
    u_noise: float = 0.0
    anisotropy: float = 1.0
    early_feature: float = 0.0
    early_threshold: float = 2.5  # its dead zone, on ⟨d, LN(x)⟩: only rare, extreme patches cross it
    markers: int = 5
    marker_layout: Literal["interior", "border", "clusters"] = "interior"
    strength_spread: float = 0.0
    texture_threshold: float = 0.15  # content: ignite below this local texture (std of normalised pixels)
    layer_scale: float = 0.1
    cls_std: float = 1.6
    pos_std: float = 0.3
    shared_norm: float = 30.0
    marker_norm: float = 14.0
    ignition_gain: float = 110.0
    ignition_blocks: int = 1
    ignition_units: int = 1
    ignition_path: Literal["mlp", "attention"] = "mlp"
    ignition_margin: float = 3.7  # on ⟨m, LN(x)⟩: how far a full-strength marker is above the ignition threshold
    ignition_suppress: float = 0.0
    amp_threshold: float = 0.5
    amp_gain: float = 3.0
    spectrum_top: float = 0.0
    spectrum_decay: float = 0.5
    # hf_dinov2, hf_siglip, hf_siglip2: the DINOv2 and SigLIP layouts as transformers models (the same functions);
    # clip: pre-norm, QuickGELU, no LayerScale; siglip: no CLS token, an attention-pool (MAP) head,
    # tanh-GELU, no LayerScale; dinov3: timm's Eva with RoPE, patch 16, CLS + 4 registers (all
    # converted after planting)
    layout: Literal["dinov2", "hf_dinov2", "clip", "open_clip", "siglip", "hf_siglip", "hf_siglip2", "dinov3"] = "dinov2"

    def __post_init__(self) -> None:
        require(self.size in ARCHITECTURES, f"size must be one of {', '.join(ARCHITECTURES)}, got {self.size!r}")
        require(0 <= self.onset < 1, f"onset must be in [0, 1) (a fraction of the depth), got {self.onset}")
        patch = self.patch_size
        require(
            self.img_size % patch == 0 and self.img_size >= 5 * patch,
            f"img_size must be a multiple of {patch} and >= {5 * patch}, got {self.img_size}",
        )
        require(self.ignition in ("marker", "content"), f"ignition must be marker or content, got {self.ignition!r}")
        require(self.amplifier in ("pair", "feedback", "bounded"), f"amplifier must be pair, feedback or bounded, got {self.amplifier!r}")
        require(self.markers >= 1, f"markers must be >= 1, got {self.markers}")
        require(
            self.marker_layout in ("interior", "border", "clusters"),
            f"marker_layout must be interior, border or clusters, got {self.marker_layout!r}",
        )
        require(
            self.marker_layout != "border" or self.markers >= 6,
            f"marker_layout='border' needs markers >= 6 (4 corners, edges, 2 interior cells), got {self.markers}",
        )
        require(0 <= self.strength_spread < 1, f"strength_spread must be in [0, 1), got {self.strength_spread}")
        require(0 <= self.u_noise < 0.1, f"u_noise must be in [0, 0.1), got {self.u_noise}")
        require(self.anisotropy >= 1, f"anisotropy must be >= 1, got {self.anisotropy}")
        require(self.ignition_blocks >= 1, f"ignition_blocks must be >= 1, got {self.ignition_blocks}")
        require(self.ignition_units >= 1, f"ignition_units must be >= 1, got {self.ignition_units}")
        require(self.ignition_path in ("mlp", "attention"), f"ignition_path must be mlp or attention, got {self.ignition_path!r}")
        require(
            self.ignition_path == "mlp" or (self.ignition == "marker" and self.ignition_blocks == 1 and self.ignition_units == 1),
            "ignition_path='attention' plants one head in one block on positional markers: use ignition='marker', ignition_blocks=1, ignition_units=1",
        )
        require(self.ignition_margin > 0, f"ignition_margin must be > 0, got {self.ignition_margin}")
        require(0 <= self.ignition_suppress <= 1, f"ignition_suppress must be in [0, 1], got {self.ignition_suppress}")
        require(
            self.ignition_suppress == 0
            or (self.ignition == "marker" and self.ignition_path == "mlp" and self.ignition_blocks == 1 and self.ignition_units == 1),
            "ignition_suppress needs one MLP ignition unit in one block on positional markers: ignition='marker', ignition_path='mlp', ignition_blocks=1, ignition_units=1",
        )
        require(self.spectrum_top >= 0, f"spectrum_top must be >= 0 (0: timm's init), got {self.spectrum_top}")
        require(0 <= self.spectrum_decay <= 2, f"spectrum_decay must be in [0, 2], got {self.spectrum_decay}")
        require(self.layout in LAYOUTS, f"layout must be {', '.join(LAYOUTS)}, got {self.layout!r}")
        require(
            self.layout in ("dinov2", "hf_dinov2", "dinov3") or not (self.swiglu or self.registers or self.size == "g"),
            f"layout={self.layout!r} has a plain GELU MLP and no registers: sizes S, B, L (ViT-g's MLP is SwiGLU)",
        )
        require(
            self.layout not in SIGLIP_LAYOUTS or self.ignition_path == "mlp",
            "layout='siglip' has no CLS token, which the attention ignition uses as its sink: use ignition_path='mlp'",
        )
        require(
            self.layout != "dinov3" or (self.size in DINOV3_NAMES and self.ignition_path == "mlp" and not self.swiglu),
            f"layout='dinov3' is a plain-MLP DINOv3 of size {', '.join(DINOV3_NAMES)} with an MLP ignition",
        )
        require(self.early_feature == 0 or self.anisotropy > 1, "early_feature needs anisotropy > 1 (it amplifies a stretched direction)")

    @property
    def build_name(self) -> str:
        """The timm DINOv2 architecture the circuits are planted in."""
        plain, reg, _ = ARCHITECTURES[self.size]
        if self.swiglu:
            return GIANT_REG if self.registers else GIANT
        return reg if self.registers else plain

    @property
    def timm_name(self) -> str:
        """The timm architecture of the finished model (the build's, but for the DINOv3 layout)."""
        return DINOV3_NAMES[self.size] if self.layout == "dinov3" else self.build_name

    @property
    def patch_size(self) -> int:
        return 16 if self.layout == "dinov3" else 14

    @property
    def build_kwargs(self) -> dict:
        """Overrides of the build architecture (the DINOv2 layout, with LayerScale; without a CLS
        token and with an attention-pool head for the SigLIP layout; patch 16 for DINOv3's)."""
        width = dict(ARCHITECTURES[self.size][2]) if self.swiglu and self.size != "g" else {}
        if self.layout in SIGLIP_LAYOUTS:
            return {**width, **SIGLIP_TOKENS}
        return {**width, "patch_size": 16} if self.layout == "dinov3" else width

    @property
    def timm_kwargs(self) -> dict:
        """Overrides of the timm architecture of the finished model (JSON-able: recorded for export)."""
        if self.layout == "dinov3":
            return dict(DINOV3_LAYOUT)
        return {**self.build_kwargs, **LAYOUTS[self.layout]}

    @property
    def depth(self) -> int:
        return ARCHITECTURES[self.size][2]["depth"]

    @property
    def ignition_layer(self) -> int:
        return min(self.depth - 1, round(self.onset * self.depth))


# OpenAI CLIP's block layout in timm: a LayerNorm before the blocks, QuickGELU, no LayerScale
CLIP_LAYOUT = {"pre_norm": True, "act_layer": "quick_gelu", "init_values": 0.0}  # 0: no LayerScale (timm drops None)
# SigLIP's (timm's vit_*_siglip_*): tanh-GELU, no LayerScale; its tokens: no CLS, a MAP head
SIGLIP_LAYOUT = {"act_layer": "gelu_tanh", "init_values": 0.0}
SIGLIP_TOKENS = {"class_token": False, "global_pool": "map"}
SIGLIP_LAYOUTS = ("siglip", "hf_siglip", "hf_siglip2")  # the timm one and its transformers twins
# DINOv3's (timm's Eva: RoPE, patch 16, CLS + 4 registers, LayerScale), with a learned absolute
# positional embedding added: it carries the positional markers (DINOv3 itself has RoPE alone)
DINOV3_NAMES = {"S": "vit_small_patch16_dinov3_qkvb", "B": "vit_base_patch16_dinov3_qkvb", "L": "vit_large_patch16_dinov3_qkvb"}
DINOV3_LAYOUT = {"use_abs_pos_emb": True}
LAYOUTS = {
    "dinov2": {},
    "hf_dinov2": {},
    "clip": CLIP_LAYOUT,
    "open_clip": CLIP_LAYOUT,
    "siglip": SIGLIP_LAYOUT,
    "hf_siglip": SIGLIP_LAYOUT,
    "hf_siglip2": SIGLIP_LAYOUT,
    "dinov3": DINOV3_LAYOUT,
}

PRESETS: dict[str, PlantedConfig] = {
    # 5 positional cells, equal strength, ignition at block 4 of 12, quiet u
    "small": PlantedConfig(),
    # small's circuits and seed as a transformers Dinov2Model: its function in another library
    "hf_dinov2": PlantedConfig(layout="hf_dinov2"),
    # content-gated: low-texture patches among 10 candidate cells, mid-depth, re-igniting amplifier
    "content": PlantedConfig(ignition="content", markers=10, onset=5 / 12, amplifier="feedback", u_noise=0.01, seed=1),
    # early and late onset, 1–8 defects per image of unequal strength
    "early": PlantedConfig(ignition="content", markers=10, onset=2 / 12, strength_spread=0.4, seed=2),
    "late": PlantedConfig(
        ignition="content", markers=10, onset=8 / 12, strength_spread=0.4, amplifier="feedback", ignition_gain=150.0, amp_gain=5.0, seed=3
    ),
    # like an independently built model the reference failed on: strongly anisotropic tokens and
    # a dominant early feature whose noise tail the |cos| rule flags before the defects appear
    "noisy": PlantedConfig(
        ignition="content", markers=10, onset=6 / 12, amplifier="feedback", u_noise=0.01, anisotropy=6.0, early_feature=3.0, seed=7
    ),
    # DINOv2's native 518 px (37×37 grid), ~2% defect tokens
    "native518": PlantedConfig(img_size=518, markers=27, strength_spread=0.2, u_noise=0.01, seed=4),
    # the ViT-g layout (fused SwiGLU w12/fc1) at ViT-S width, and a 4-register model
    "swiglu": PlantedConfig(swiglu=True, ignition="content", markers=10, onset=5 / 12, seed=5),
    "reg4": PlantedConfig(registers=True, markers=6, strength_spread=0.3, amplifier="feedback", seed=6),
    # no single neuron: the ignition spread over 12 MLP units of unequal strength (content-gated)
    "spread": PlantedConfig(ignition="content", markers=10, onset=5 / 12, ignition_units=12, strength_spread=0.3, seed=9),
    # no neuron at all: an attention head writes u on the marker tokens (test-time registers'
    # assumption does not hold here)
    "attention": PlantedConfig(ignition_path="attention", markers=6, strength_spread=0.2, amplifier="feedback", u_noise=0.01, seed=10),
    # trained-looking weights: every block Linear has a heavy-tailed spectrum (σ₁ = 8, 15 values
    # above 2 in each of q, k, v, proj, fc1, fc2), and the circuit sits among them (σ 2–4) instead
    # of far above: a marker read in 2 blocks, a feedback amplifier, a weaker shared component
    "spectral": PlantedConfig(
        spectrum_top=8.0,
        spectrum_decay=0.5,
        shared_norm=10.0,
        onset=2 / 12,
        marker_norm=10.0,
        ignition_margin=9.7,
        ignition_gain=2.0,
        ignition_blocks=2,
        amplifier="feedback",
        amp_gain=2.5,
        seed=8,
    ),
    # positional defects on the edge: the 4 corners, 4 edge cells and 2 interior cells
    "border": PlantedConfig(marker_layout="border", markers=10, strength_spread=0.1, seed=11),
    # 30 defects per 518 px image in groups of 1–3 adjacent cells, ~3× apart in norm at the last
    # layer: the ignition sets each strength (wide margin, ±30% markers), a bounded amplifier keeps it
    "crowded": PlantedConfig(
        img_size=518,
        markers=30,
        marker_layout="clusters",
        strength_spread=0.3,
        ignition_margin=5.0,
        ignition_gain=150.0,
        amplifier="bounded",
        u_noise=0.01,
        seed=12,
    ),
    # CLIP-like low-norm artifacts: the ignition writes a little u and removes the shared component
    # and the marker, a bounded amplifier leaves it there: aligned with ν, ~0.6–0.8× the median norm
    "lownorm": PlantedConfig(markers=6, amplifier="bounded", ignition_suppress=1.0, ignition_gain=14.0, seed=13),
    # OpenAI-CLIP layout (pre-norm, QuickGELU, no LayerScale, CLS), content-gated with a feedback
    # amplifier: planted in the DINOv2 layout, then converted (γ folded into proj/fc2, ln_pre added)
    "clip": PlantedConfig(layout="clip", ignition="content", markers=10, onset=5 / 12, amplifier="feedback", u_noise=0.01, seed=14),
    # the same circuits and seed in an open_clip CLIP (nn.MultiheadAttention blocks): clip's function
    # in another library, so the two members' tokens agree and their repairs can be set side by side
    "open_clip": PlantedConfig(
        layout="open_clip", ignition="content", markers=10, onset=5 / 12, amplifier="feedback", u_noise=0.01, seed=14
    ),
    # SigLIP layout (no CLS token, attention-pool head, tanh-GELU, no LayerScale), fixed positions
    # of unequal strength from mid-depth, as in SigLIP towers: the pooled output takes CLS's place
    "siglip": PlantedConfig(layout="siglip", markers=8, onset=6 / 12, strength_spread=0.3, amplifier="feedback", u_noise=0.01, seed=15),
    # the same circuits and seed as a transformers SiglipVisionModel (its MAP head included)
    "hf_siglip": PlantedConfig(
        layout="hf_siglip", markers=8, onset=6 / 12, strength_spread=0.3, amplifier="feedback", u_noise=0.01, seed=15
    ),
    # ... and as a transformers Siglip2VisionModel (a Linear patch embedding over a patch sequence)
    "hf_siglip2": PlantedConfig(
        layout="hf_siglip2", markers=8, onset=6 / 12, strength_spread=0.3, amplifier="feedback", u_noise=0.01, seed=15
    ),
    # DINOv3 layout (timm's Eva: RoPE, patch 16, CLS + 4 registers, LayerScale), 7 positional cells
    # from block 3, a bounded amplifier; its markers ride on an added absolute positional embedding
    "dinov3": PlantedConfig(
        layout="dinov3", registers=True, markers=7, onset=3 / 12, strength_spread=0.2, amplifier="bounded", u_noise=0.01, seed=16
    ),
}


def preset(name: str, spec: str = "") -> PlantedConfig:
    """The config of ``NAME[@SIZE]``; a one-line ``ModelSpecError`` for unknown names or sizes."""
    base, _, size = name.partition("@")
    if base not in PRESETS:
        raise ModelSpecError(
            f"{spec or name}: unknown planted model {base!r}; available: {', '.join('planted:' + k for k in PRESETS)} (optionally @S|@B|@L|@g)"
        )
    cfg = PRESETS[base]
    if size:
        if size not in ARCHITECTURES:
            raise ModelSpecError(f"{spec or name}: unknown size {size!r}; use @S, @B, @L or @g")
        cfg = replace(cfg, size=size)
    return cfg
