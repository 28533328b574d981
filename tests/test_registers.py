"""Test-time registers (issue #9): the search finds the neuron that writes the planted outliers,
the hooks equal an independent implementation on every family, a batch equals its images one
by one, and removing the hooks restores the model exactly."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from sinder.errors import ConfigError, OutputExistsError, WeightsError
from sinder.fixes import NeuronRegisters, RegisterNeurons, RegisterSearchConfig, apply_registers, find_register_neurons
from sinder.fixes.registers import hidden_units
from sinder.images import BUNDLED_EVAL, BUNDLED_TRAIN, ImageSet, bundled_photos


@pytest.fixture(scope="module")
def search_images(planted):
    return ImageSet.from_inputs(bundled_photos(BUNDLED_TRAIN), planted, planted.image_size)


@pytest.fixture(scope="module")
def eval_pixels(planted):
    images = ImageSet.from_inputs(bundled_photos(BUNDLED_EVAL), planted, planted.image_size)
    return torch.stack([images.load(i) for i in range(len(images))])


@pytest.fixture(scope="module")
def found(planted, search_images):
    return find_register_neurons(planted, search_images)


@torch.no_grad()
def last_patches(bb, px):
    x, ctx = bb.embed(px)
    for i in range(bb.depth):
        x = bb.run_block(i, x, ctx)
    return bb.patch_grid(x, ctx)


def max_over_median(grid):
    norms = grid.norm(dim=-1).flatten(1)
    return norms.max(dim=1).values / norms.median(dim=1).values


def test_search_finds_the_ignition_neuron_and_stops_at_the_onset(planted, found):
    truth = planted.ground_truth
    assert found.neurons[0] == (truth.ignition_layer, truth.ignition_unit)
    assert found.settings["layer_limit"] == truth.ignition_layer  # where the outliers first appear
    assert found.settings["detect_layer"] == planted.depth - 2 and found.settings["top_k_auto"]
    assert found.settings["top_k"] == len(found.neurons) == 1  # one neuron already removes them
    assert found.measured["outliers_before"] > 0 and found.measured["outliers_after"] == 0


def test_registers_remove_the_planted_outliers_on_held_out_photos(planted, found, eval_pixels):
    u = planted.ground_truth.u
    before = last_patches(planted, eval_pixels)
    with NeuronRegisters(planted, found):
        after = last_patches(planted, eval_pixels)
    energy = lambda g: float(((g @ u) ** 2).sum() / (g**2).sum())  # noqa: E731
    assert energy(before) > 0.3 and energy(after) < 1e-3 * energy(before)
    assert float(max_over_median(before).max()) > 4 and float(max_over_median(after).max()) < 2.0
    # the ordinary tokens are untouched: only the ignited ones had the neuron active
    ignited = planted.ground_truth.ignition(planted, eval_pixels)
    cos = F.cosine_similarity(before, after, dim=-1)[~ignited]
    assert float(cos.min()) > 0.999


def test_a_batch_of_8_equals_its_images_one_by_one(planted, found, eval_pixels):
    assert eval_pixels.shape[0] == 8
    with NeuronRegisters(planted, found), torch.no_grad():
        batch = planted.model_forward(eval_pixels)
        alone = torch.cat([planted.model_forward(eval_pixels[i : i + 1]) for i in range(8)])
        grids = last_patches(planted, eval_pixels)
    # final-normed tokens are O(1): this is float rounding of batched matmuls, nothing more
    assert float((batch - alone).abs().max()) < 1e-4
    # every image of the batch is fixed, not only the first (the public code edits image 0 only)
    assert bool((max_over_median(grids) < 2.0).all())
    assert batch.shape[1] == planted.num_prefix_tokens + grids.shape[1] * grids.shape[2]  # the extra token never leaves a block


def test_removing_the_registers_restores_the_model_exactly(planted, found, eval_pixels):
    with torch.no_grad():
        reference = planted.model_forward(eval_pixels[:2])
        handle = apply_registers(planted, found)
        changed = planted.model_forward(eval_pixels[:2])
        handle.remove()
        restored = planted.model_forward(eval_pixels[:2])
    assert not torch.equal(reference, changed)
    assert torch.equal(reference, restored)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in planted.blocks())


def test_zero_mode_only_zeroes_the_neurons_on_patch_tokens(planted, found, eval_pixels):
    layer, unit = found.neurons[0]
    fc2 = planted.block_view(layer).mlp_out.module
    seen = []
    with NeuronRegisters(planted, found, mode="zero"), torch.no_grad():
        capture = fc2.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))  # runs after the edit
        try:
            out = planted.model_forward(eval_pixels[:2])
        finally:
            capture.remove()
    h = seen[-1]
    p = planted.num_prefix_tokens
    assert out.shape[1] == h.shape[1]  # no extra token in this mode
    assert bool((h[:, p:, unit] == 0).all())
    assert float(h[:, p:, unit - 1].abs().sum()) > 0  # other units keep their activation


def test_registers_json_round_trip_and_one_line_errors(planted, found, tmp_path):
    path = found.save(tmp_path / "registers.json")
    again = RegisterNeurons.load(path)
    assert again == found
    assert json.loads(path.read_text())["format"] == "sinder-registers"
    with pytest.raises(OutputExistsError, match="--overwrite"):
        found.save(path)
    found.save(path, overwrite=True)
    bad = tmp_path / "bad.json"
    for text, match in (
        ("{", "not a readable"),
        ('{"format": "other"}', "not a sinder registers"),
        ('{"format": "sinder-registers", "version": 1, "neurons": [[99, 0]], "depth": 12, "hidden": [1536]}', "outside"),
    ):
        bad.write_text(text)
        with pytest.raises(WeightsError, match=match) as err:
            RegisterNeurons.load(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(WeightsError, match="no such file"):
        RegisterNeurons.load(tmp_path / "missing.json")
    other = RegisterNeurons(((0, 5000),), "x", planted.depth, tuple([5001] * planted.depth))
    with pytest.raises(ConfigError, match="does not exist"):
        NeuronRegisters(planted, other)
    with pytest.raises(ConfigError, match="24-block"):
        NeuronRegisters(planted, RegisterNeurons(((0, 1),), "x", 24, tuple([10] * 24)))


def zoo_search(member: str):
    from sinder.backbones import load_backbone

    bb = load_backbone(f"planted:{member}")
    return bb, find_register_neurons(bb, ImageSet.from_inputs(bundled_photos(BUNDLED_TRAIN), bb, bb.image_size))


@pytest.mark.slow
def test_search_raises_top_k_until_every_unit_of_a_spread_ignition_is_found():
    bb, found = zoo_search("spread")  # the ignition is 12 units of unequal strength in one block
    truth = bb.ground_truth
    units = {(truth.ignition_layer, truth.ignition_unit - k) for k in range(12)}
    assert found.neurons[0] == (truth.ignition_layer, truth.ignition_unit)  # the strongest first
    assert units <= set(found.neurons) and found.settings["top_k"] == 16  # 1, 2, 4, 8 were not enough
    assert found.measured["outliers_before"] > 0 and found.measured["outliers_after"] == 0


@pytest.mark.slow
def test_search_says_so_when_no_mlp_neuron_writes_the_outliers(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="sinder.fixes.registers"):
        bb, found = zoo_search("attention")  # an attention head writes the defect
    assert bb.ground_truth.ignition_unit == -1
    assert found.settings["top_k"] == found.settings["max_top_k"]  # every step of top-k was tried
    assert found.measured["outliers_after"] == found.measured["outliers_before"] > 0
    assert "may not be written by MLP neurons" in caplog.text


def test_search_refuses_a_layer_without_outliers(planted, search_images):
    with pytest.raises(ConfigError, match="no patch token at block 0") as err:
        find_register_neurons(planted, search_images, RegisterSearchConfig(detect_layer=0, threshold=1e6))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="layer_limit"):
        RegisterSearchConfig(detect_layer=3, layer_limit=5).resolve_layer(planted.depth)


def test_fixed_top_k_keeps_that_many_neurons(planted, search_images):
    cfg = RegisterSearchConfig(top_k=3, layer_limit=planted.ground_truth.ignition_layer)
    got = find_register_neurons(planted, search_images, cfg)
    assert len(got.neurons) == 3 and got.settings["top_k"] == 3 and not got.settings["top_k_auto"]
    assert list(got.scores) == sorted(got.scores, reverse=True)
    assert all(layer <= planted.ground_truth.ignition_layer for layer, _ in got.neurons)


# -- every family: the hooks against an independent implementation --------------------------
def reference_forward(backbone, px, units_by_layer):
    """Test-time registers written out from the block view: the extra token inserted after the
    prefix, each block computed by hand, the hidden edited, the token dropped at the end."""
    import copy

    from helpers.families import view_block

    x, ctx = backbone.embed(px)
    p = backbone.num_prefix_tokens
    x = torch.cat([x[:, :p], x.new_zeros(x.shape[0], 1, x.shape[-1]), x[:, p:]], dim=1)
    extended = copy.copy(backbone)  # the extra token is one more unrotated prefix token
    extended.num_prefix_tokens = p + 1

    def move(units):
        def edit(hidden):
            for unit in units:
                col = hidden[:, :, unit]
                hidden[:, p, unit] = col.gather(1, col.abs().argmax(dim=1, keepdim=True))[:, 0]
                hidden[:, p + 1 :, unit] = 0

        return edit

    for i in range(backbone.depth):
        x = view_block(extended, i, x, ctx, move(units_by_layer.get(i, [])))
    return backbone.final_norm(torch.cat([x[:, :p], x[:, p + 1 :]], dim=1))


def _family_cases():
    from helpers.families import ALL_CASES

    return ALL_CASES


@pytest.mark.parametrize("case", _family_cases())
def test_hooks_equal_the_written_out_method_on_every_family(case):
    from helpers.families import make, pixels

    bb = make(case)
    px = pixels(bb)
    units = {0: [1, 7], bb.depth - 1: [3]}
    neurons = RegisterNeurons(
        tuple((layer, u) for layer, us in units.items() for u in us), bb.spec, bb.depth, tuple(hidden_units(bb, i) for i in range(bb.depth))
    )
    with torch.no_grad():
        plain = bb.model_forward(px)
        expected = reference_forward(bb, px, units)
        with NeuronRegisters(bb, neurons):
            got = bb.model_forward(px)
        restored = bb.model_forward(px)
    assert got.shape == plain.shape
    assert (got - expected).abs().max() < 1e-4, case
    assert (got - plain).abs().max() > 1e-3, case  # the edit is not a no-op on this model
    assert torch.equal(restored, plain)
