"""The defect rule on hand-made token grids: the whole grid, a threshold the defects do not move,
and the faithful rule kept as the reference's."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from sinder.detect import DefectRule, meanstd_threshold, robust_threshold
from sinder.errors import ConfigError
from sinder.repair.config import FAITHFUL_RULE, RepairConfig

D = 32
NU = torch.eye(D)[0]


def background(h: int, w: int, seed: int = 0, max_cos: float = 0.1) -> torch.Tensor:
    """(1, H, W, D) unit tokens whose |cos| with ν is spread over [0, max_cos]."""
    g = torch.Generator().manual_seed(seed)
    rest = F.normalize(torch.randn(1, h, w, D - 1, generator=g), dim=-1)
    c = torch.rand(1, h, w, 1, generator=g) * max_cos
    return torch.cat([c, rest * (1 - c**2).sqrt()], dim=-1)


def defect(norm: float, cos: float, seed: int) -> torch.Tensor:
    """A token of ``norm`` whose |cos| with ν is ``cos``."""
    other = F.normalize(torch.randn(D - 1, generator=torch.Generator().manual_seed(seed)), dim=0)
    return norm * torch.cat([torch.tensor([cos]), other * (1 - cos**2) ** 0.5])


def test_border_and_corner_defects_are_found():
    grid = background(14, 14)
    cells = [(0, 0), (0, 13), (13, 0), (13, 13), (0, 4), (6, 13), (5, 5)]  # corners, edges, one inside
    for i, (y, x) in enumerate(cells):
        grid[0, y, x] = defect(20.0, 0.95, i)
    found = DefectRule().detect(grid, NU)
    assert set(map(tuple, found[0].nonzero().tolist())) == set(cells)
    # the reference's rule (the faithful one) still clears the border: only the inside cell
    faithful = FAITHFUL_RULE.detect(grid, NU)
    assert faithful[0].nonzero().tolist() == [[5, 5]]


def crowded_grid() -> tuple[torch.Tensor, list, list]:
    """A 16×16 image with 12 strong defects (some adjacent) and 3 weaker ones."""
    grid = background(16, 16, seed=1)
    strong = [(2, 2), (2, 3), (3, 2), (3, 3), (7, 10), (7, 11), (12, 4), (0, 15), (15, 0), (10, 14), (5, 7), (13, 13)]
    weak = [(9, 2), (1, 9), (14, 8)]
    for i, (y, x) in enumerate(strong):
        grid[0, y, x] = defect(25.0, 0.9, i)
    for i, (y, x) in enumerate(weak):
        grid[0, y, x] = defect(6.0, 0.45, 100 + i)
    return grid, strong, weak


def test_crowded_image_weak_defects_found_by_robust_missed_by_meanstd():
    grid, strong, weak = crowded_grid()
    robust = DefectRule(threshold="robust").detect(grid, NU)[0]
    assert set(map(tuple, robust.nonzero().tolist())) == set(strong + weak)  # all of them, nothing else
    meanstd = DefectRule(threshold="meanstd").detect(grid, NU)[0]
    assert all(meanstd[y, x] for y, x in strong)
    assert not any(meanstd[y, x] for y, x in weak)  # the strong ones lifted μ + 4σ over them
    scores = (F.normalize(grid, dim=-1) @ NU).abs()
    assert float(robust_threshold(scores, 4.0)) < 0.45 < float(meanstd_threshold(scores, 4.0))
    # a fifth of the grid strong defects: μ + 4σ is lifted over all of them, the robust one is not
    dense = background(16, 16, seed=4)
    cells = torch.randperm(256, generator=torch.Generator().manual_seed(5))[:51]
    for i, c in enumerate(cells):
        dense[0, c // 16, c % 16] = defect(25.0, 0.9, i)
    assert not DefectRule(threshold="meanstd").detect(dense, NU).any()
    assert torch.equal(DefectRule(threshold="robust").detect(dense, NU)[0].flatten().nonzero().flatten().sort().values, cells.sort().values)


def test_robust_threshold_is_the_plain_one_when_nothing_stands_out_and_stops_at_a_fixed_point():
    scores = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(2)) * 0.1  # nothing above μ + 4σ
    assert torch.allclose(robust_threshold(scores, 4.0), meanstd_threshold(scores, 4.0), atol=1e-6)
    grid, _, _ = crowded_grid()
    s = (F.normalize(grid, dim=-1) @ NU).abs()
    thr = robust_threshold(s, 4.0)
    keep = s.flatten(1) <= thr[:, None]
    v = s.flatten(1)[keep]
    assert float(thr) == pytest.approx(float(v.mean() + 4 * v.std()), rel=1e-5)  # its own statistics


def test_noise_tail_that_fails_the_gate_stays_in_the_statistics():
    """Ordinary tokens with a heavy |cos| tail but ordinary norms are not defects, so the robust
    threshold is then exactly the plain mean + k·std (the gate-rejected share does not grow);
    with the gate off they count as outliers and leave the statistics."""
    g = torch.Generator().manual_seed(6)
    scores = (torch.randn(2, 16, 16, generator=g).abs() ** 3) * 0.02  # heavy right tail
    norms = 1 + 0.1 * torch.rand(2, 16, 16, generator=g)
    rule = DefectRule(threshold="robust")
    plain = meanstd_threshold(scores, 4.0)
    assert torch.allclose(rule.cosine_threshold(scores, norms), plain, rtol=1e-6)
    assert (DefectRule(norm_gate=0, threshold="robust").cosine_threshold(scores, norms) < plain).all()
    assert rule.cosine_mask(scores, norms).sum() == (scores > plain[:, None, None]).sum()


def test_faithful_rule_is_the_reference_mean_plus_k_std_with_the_border_cleared():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(2, 9, 9, generator=g) * 0.2
    scores[:, 0, 0] = scores[:, 4, 4] = scores[:, 8, 3] = 0.9  # border outliers count in the statistics
    scores[1, 2:5, 5:8] = 0.5
    assert FAITHFUL_RULE.threshold == "meanstd" and FAITHFUL_RULE.border == 1 and FAITHFUL_RULE.norm_gate == 0
    got = FAITHFUL_RULE.cosine_mask(scores)
    for b in range(2):  # the reference: logits = −|cos|, mask = logits < mean − k·std, then the border cleared
        logits = -scores[b]
        ref = logits < logits.mean() - 4.0 * logits.std()
        ref[:1, :] = ref[:, :1] = ref[-1:, :] = ref[:, -1:] = False
        assert torch.equal(got[b], ref)
    assert RepairConfig.faithful().rule == FAITHFUL_RULE
    assert RepairConfig.faithful(kernel=5).rule.border == 2  # where the 5×5 window fits
    assert RepairConfig().rule.border == 0 and RepairConfig(kernel=5).rule.border == 0  # default: the whole grid


def test_threshold_is_validated_recorded_and_a_cli_option():
    from sinder.commands.common import add_rule_arguments, rule_from_args

    with pytest.raises(ConfigError, match="--threshold"):
        DefectRule(threshold="median")
    with pytest.raises(ConfigError, match="border"):
        DefectRule(border=-1)
    assert DefectRule().to_dict()["threshold"] == "meanstd" and DefectRule().to_dict()["border"] == 0
    p = argparse.ArgumentParser(prog="sinder analyze")
    add_rule_arguments(p)
    assert rule_from_args(p.parse_args(["--threshold", "meanstd"])).threshold == "meanstd"
    assert rule_from_args(p.parse_args([])).threshold == "meanstd"
    with pytest.raises(SystemExit):
        p.parse_args(["--threshold", "mad"])


def test_aligned_gate_admits_tokens_long_along_nu_not_the_noise_tail():
    """A |cos| outlier passes the gate by its norm (> 2× the median) or by its component along ν
    (> 1.25× the median): a weakly grown defect at 1.7× the median norm and |cos| 0.85 is found,
    an ordinary-norm token with a large |cos| (the noise tail) and a short token are not."""
    grid = background(16, 16, seed=4)
    weak, tail, short, strong = (3, 3), (8, 8), (12, 4), (5, 12)
    grid[0, weak[0], weak[1]] = defect(1.7, 0.85, 1)  # along ν: 1.45× the median
    grid[0, tail[0], tail[1]] = defect(1.05, 0.6, 2)  # 0.63×
    grid[0, short[0], short[1]] = defect(0.7, 0.95, 3)  # low-norm: 0.67×
    grid[0, strong[0], strong[1]] = defect(9.0, 0.95, 4)
    found = DefectRule().detect(grid, NU)[0]
    assert set(map(tuple, found.nonzero().tolist())) == {weak, strong}
    assert set(map(tuple, DefectRule(aligned_gate=0).detect(grid, NU)[0].nonzero().tolist())) == {strong}
    assert set(map(tuple, DefectRule(norm_gate=0).detect(grid, NU)[0].nonzero().tolist())) == {weak, tail, short, strong}
    with pytest.raises(ConfigError, match="--aligned-gate"):
        DefectRule(aligned_gate=-1)
