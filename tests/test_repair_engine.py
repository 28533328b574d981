"""The training engine: fast = reference, batching, resume exactness, NaN guard, outputs."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch
from helpers.repair import IGNITE, photos, pixels, tiny_backbone

from sinder.detect import DefectRule
from sinder.errors import OutputExistsError
from sinder.repair import RepairConfig, Trainer, attach, gram_loss, repair

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see the fixture


def _one_step(impl: str, px: torch.Tensor, **kw) -> tuple[dict, list]:
    bb, dirs = tiny_backbone()
    cfg = RepairConfig(impl=impl, lr=1.0, progress=False, **kw)
    handle = attach(bb, factor_frozen=impl == "reference")
    trainer = Trainer(bb, handle, dirs, cfg)
    results = [trainer.step(px[i : i + 1]) for i in range(px.shape[0])] if impl == "reference" else [trainer.step(px)]
    return handle.eps_state(), results


@pytest.mark.parametrize("one_pass", [True, False])
def test_fast_step_equals_reference_step(one_pass):
    bb, _ = tiny_backbone()
    px = pixels(photos(1, seed=4), bb)
    ref, ref_res = _one_step("reference", px, limit_layers=1)
    fast, fast_res = _one_step("fast", px, limit_layers=1, one_pass=one_pass)
    assert ref_res[0].layers == fast_res[0].layers == [IGNITE]
    assert ref_res[0].defects == fast_res[0].defects and ref_res[0].defects[0] >= 3
    update = max(v.abs().max().item() for v in ref.values())
    assert update > 1e-3  # a real update, so the comparison below means something
    diff = max((ref[k] - fast[k]).abs().max().item() for k in ref)
    assert diff <= 1e-5 * update
    # the window is the defect block alone (limit_layers=1): blocks 0 and 2 did not move
    moved = {k for k, v in fast.items() if v.abs().max() > 0}
    assert moved == {f"blocks.{IGNITE}.{r}" for r in ("v", "proj", "mlp_in", "mlp_out")}


def test_batched_fast_step_is_the_mean_of_reference_steps():
    bb, _ = tiny_backbone()
    px = pixels(photos(3, seed=5), bb)
    singles = [_one_step("reference", px[i : i + 1])[0] for i in range(3)]
    batched, res = _one_step("fast", px, batch_size=3)
    assert res[0].contributing == 3 and res[0].skipped == [False] * 3
    for k in batched:
        mean = sum(s[k] for s in singles) / 3
        assert (batched[k] - mean).abs().max() <= 1e-5 * max(mean.abs().max().item(), 1e-8)


def test_images_with_different_defect_layers_each_train_their_own_window():
    """Images whose first qualifying layers differ: the fast groups (one and two pass) and the
    reference loop over the same batch all give the mean of the single-image reference steps."""
    depth = 4
    bb, u = tiny_backbone(depth=depth)
    px = pixels(photos(3, seed=11), bb)
    dirs = torch.randn(depth, u.shape[1], generator=torch.Generator().manual_seed(0))
    kw = {"rule": DefectRule(mask_thr=2.5), "limit_layers": 1, "lr": 1.0, "progress": False}

    def step(impl, batch, **extra):
        b, _ = tiny_backbone(depth=depth)
        handle = attach(b, factor_frozen=impl == "reference")
        res = Trainer(b, handle, dirs, RepairConfig(impl=impl, **kw, **extra)).step(batch)
        return handle.eps_state(), res

    singles = [step("reference", px[i : i + 1]) for i in range(3)]
    layers = [r.image_layers[0] for _, r in singles]
    assert len(set(layers)) == 3 and -1 not in layers  # three different windows
    mean = {k: sum(e[k] for e, _ in singles) / 3 for k in singles[0][0]}
    scale = max(v.abs().max().item() for v in mean.values())
    assert scale > 1e-5
    for impl, extra in (("reference", {}), ("fast", {"one_pass": True}), ("fast", {"one_pass": False})):
        eps, res = step(impl, px, **extra)
        assert res.image_layers == layers and res.contributing == 3, (impl, extra)
        assert max((eps[k] - mean[k]).abs().max().item() for k in mean) <= 1e-4 * scale, (impl, extra)


def _run(out, steps, **kw):
    bb, dirs = tiny_backbone()
    cfg = RepairConfig(max_steps=steps, progress=False, export=False, analysis=False, checkpoint_every=kw.pop("checkpoint_every", 2), **kw)
    return repair(bb, photos(5), cfg, out_dir=out, directions=dirs, on_step=kw.get("on_step"))


def _rows(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("interrupt", ["stop_at_3", "killed_at_5"])
def test_resumed_run_ends_with_exactly_the_same_eps(tmp_path, interrupt):
    full = _run(tmp_path / "full", 6)

    if interrupt == "stop_at_3":
        _run(tmp_path / "part", 3)
    else:

        def kill(row):
            if row["step"] == 5:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            bb, dirs = tiny_backbone()
            repair(
                bb,
                photos(5),
                RepairConfig(max_steps=6, progress=False, export=False, analysis=False, checkpoint_every=2),
                out_dir=tmp_path / "part",
                directions=dirs,
                on_step=kill,
            )
        assert type(bb.model.blocks[0].mlp.fc1) is torch.nn.Linear  # a failed run leaves a plain model
    resumed = _run(tmp_path / "part", 6, resume=True)
    assert resumed.summary["resumed"] and resumed.summary["steps"] == 6
    for k, v in full.epsilon.items():
        assert torch.equal(v, resumed.epsilon[k]), k
    assert any(v.abs().max() > 0 for v in full.epsilon.values())
    a, b = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert [r["step"] for r in b] == list(range(1, 7))  # rows after the checkpoint were replaced
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_nonfinite_gradients_skip_the_step(tmp_path):
    bb, dirs = tiny_backbone()

    def poison(module, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda g: torch.full_like(g, float("nan")))

    bb.model.blocks[IGNITE].register_forward_hook(poison)
    cfg = RepairConfig(max_steps=3, progress=False, export=False, analysis=False)
    res = repair(bb, photos(2), cfg, out_dir=tmp_path / "o", directions=dirs)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in res.epsilon.values())
    assert res.summary["nonfinite_steps"] == 3 and res.summary["optimizer_steps"] == 0
    assert all(r["nonfinite"] and not r["stepped"] for r in _rows(tmp_path / "o"))


def test_nonfinite_loss_skips_the_step(monkeypatch):
    import sinder.repair.engine as engine

    bb, dirs = tiny_backbone()
    handle = attach(bb)
    trainer = Trainer(bb, handle, dirs, RepairConfig(progress=False))
    monkeypatch.setattr(engine, "neighbour_loss", lambda grid, *a, **k: grid.sum((1, 2, 3)) * float("inf"))
    res = trainer.step(pixels(photos(1), bb))
    assert res.nonfinite and not res.stepped
    assert all(p.grad is None and p.abs().max() == 0 for p in handle.parameters())


def test_existing_output_is_refused_unless_overwrite_or_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    bb, dirs = tiny_backbone()
    with pytest.raises(OutputExistsError):
        repair(bb, photos(2), RepairConfig(max_steps=1, progress=False, export=False, analysis=False), out_dir=out, directions=dirs)
    assert type(bb.model.blocks[0].attn.qkv) is torch.nn.Linear  # refused before touching the model
    res = repair(
        bb, photos(2), RepairConfig(max_steps=1, progress=False, export=False, analysis=False, overwrite=True), out_dir=out, directions=dirs
    )
    assert (out / "summary.json").exists() and (out / "notes.txt").read_text() == "mine"
    assert res.summary["steps"] == 1

    from sinder.commands import repair as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    args = parser.parse_args(["planted:small", "--data", str(tmp_path), "--out", str(out), "--save-at-skip", "50", "0.9"])
    assert cmd.repair_config(args).save_at_skip == (0.5, 0.9)
    with pytest.raises(OutputExistsError):
        cmd.run(args)  # refused before the model is even loaded


def test_repair_removes_the_planted_defects_and_keeps_features(tmp_path):
    bb, dirs = tiny_backbone()
    cfg = RepairConfig(max_steps=60, lr=0.05, window=8, save_at_skip=(0.5,), progress=False, analysis=False)
    res = repair(bb, photos(8), cfg, eval_images=photos(3, seed=9), out_dir=tmp_path / "o", directions=dirs)
    s = res.summary
    assert s["stop_reason"] == "skip_ratio" and s["final_skip_ratio"] >= 0.75
    m = s["metrics"]
    assert m["before"]["high_norm_rate"] > 0.02 and m["after"]["high_norm_rate"] == 0
    assert m["before"]["max_over_median"] > 3 and m["after"]["max_over_median"] < 2.5
    assert m["features"]["non_defect_cosine"] > 0.999 and m["features"]["cls_cosine"] > 0.99
    assert (tmp_path / "o" / "checkpoints" / "skip_0.50.safetensors").exists()
    # the export was re-loaded and checked; load it once more here
    from sinder.export import max_token_diff, reload_exported

    assert s["export_max_token_diff"] is not None and s["export_max_token_diff"] <= 1e-5
    again = reload_exported(bb, s["weights"])
    assert max_token_diff(bb, again, pixels(photos(1, seed=9), bb)) <= 1e-5
    assert set(p.name for p in (tmp_path / "o").iterdir()) >= {
        "config.json",
        "log.jsonl",
        "summary.json",
        "checkpoint.safetensors",
        "weights",
    }
    # σ and its learned correction per part, named where they live, for the HTML report
    from sinder.report import read_sigma

    entries = {(e.layer, e.linear): e for e in read_sigma(tmp_path / "o", [])}
    # parts a gradient reached (factorised then); the others kept ε = 0 and were never factorised
    trained = {int(k.split(".")[1]) for k, eps in res.epsilon.items() if eps.abs().max() > 0}
    assert IGNITE in trained and len(entries) == 4 * len(trained) and {layer for layer, _ in entries} == trained
    assert (IGNITE, "attn.qkv[96:144]") in entries and (IGNITE, "mlp.fc2") in entries
    delta = entries[(IGNITE, "mlp.fc1")].delta
    assert torch.equal(torch.from_numpy(delta).float(), res.epsilon[f"blocks.{IGNITE}.mlp_in"])


def test_num_eval_max_zero_means_no_held_out_metrics():
    bb, dirs = tiny_backbone()
    cfg = RepairConfig(max_steps=1, progress=False, num_eval_max=0)
    res = repair(bb, photos(2), cfg, eval_images=photos(1, seed=9), directions=dirs)  # was a ZeroDivisionError
    assert res.summary["metrics"] is None and res.summary["num_eval_images"] == 0 and res.summary["steps"] == 1


def test_gram_anchor_is_zero_at_start_and_training_runs():
    x = torch.randn(10, 8)
    assert gram_loss(x, x).item() == pytest.approx(0.0, abs=1e-7)
    assert gram_loss(x + 0.5 * torch.randn(10, 8), x).item() > 1e-3
    bb, _ = tiny_backbone()
    px = pixels(photos(1, seed=4), bb)
    plain, r0 = _one_step("fast", px)
    anchored, r1 = _one_step("fast", px, gram_weight=10.0)
    assert r0[0].losses == pytest.approx(r1[0].losses, abs=1e-6)  # ε = 0: anchor term vanishes
    assert max((plain[k] - anchored[k]).abs().max().item() for k in plain) <= 1e-6  # …and so does its gradient


@pytest.mark.slow
def test_cli_end_to_end_on_the_planted_model(tmp_path, capsys):
    from sinder.commands import repair as cmd
    from sinder.images import bundled_photos

    data, held = tmp_path / "data", tmp_path / "held"
    data.mkdir()
    held.mkdir()
    for p in bundled_photos(("astronaut", "coffee")):
        p.image.save(data / f"{p.name.split(':')[1]}.png")
    bundled_photos(("chelsea",))[0].image.save(held / "chelsea.jpg")
    (data / "broken.png").write_bytes(b"\x89PNG broken")
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "planted:small",
            "--data",
            str(data),
            "--eval-data",
            str(held),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert cmd.run(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["num_eval_images"] == 1 and summary["model"]["model"] == "planted:small"
    assert [s["name"] for s in summary["skipped_files"]] == [str(data / "broken.png")]
    assert summary["export_max_token_diff"] == 0.0 and (out / "weights" / "model.safetensors").exists()
    assert summary["metrics"]["before"]["high_norm_rate"] > 0  # the planted defects are there to repair
    rows = _rows(out)
    assert len(rows) == 2 and rows[0]["layer"] is not None and rows[0]["defects"] >= 3
    assert "held-out" in capsys.readouterr().out


@pytest.mark.slow
def test_overwrite_leaves_nothing_of_an_earlier_run(tmp_path):
    """A rerun with --overwrite (here without analyses) must not show the earlier run's analyses or report."""
    from sinder.report import build_report
    from sinder.runfolder import RunFolder

    out = tmp_path / "run"
    bb, dirs = tiny_backbone()
    first = repair(
        bb, photos(4), RepairConfig(max_steps=2, progress=False, export=False), eval_images=photos(2, seed=9), out_dir=out, directions=dirs
    )
    folder = RunFolder(out)
    assert first.analysis_before is not None and folder.analysis("before").holds_analysis(folder.analysis("before").path)
    assert folder.analysis("after").holds_analysis(folder.analysis("after").path)
    caption = re.compile(r"after repair: \d+ defects")  # the image caption the stale page would show
    assert caption.search(build_report([out]))
    (out / "report.html").write_text("old page")
    bb, dirs = tiny_backbone()
    cfg = RepairConfig(max_steps=1, progress=False, export=False, analysis=False, overwrite=True)
    repair(bb, photos(4), cfg, eval_images=photos(2, seed=9), out_dir=out, directions=dirs)
    left = sorted(p.name for p in out.iterdir())
    assert left == ["checkpoint.safetensors", "config.json", "log.jsonl", "sigma.safetensors", "summary.json"]
    page = build_report([out])
    assert "run made with --no-analysis" in page and not caption.search(page)


def test_library_repair_holds_out_images_and_writes_the_complete_folder(tmp_path):
    """Without eval images, ~10% of the training images (at least one) are kept apart and analysed."""
    bb, dirs = tiny_backbone()
    res = repair(bb, photos(5), RepairConfig(max_steps=1, progress=False, export=False), out_dir=tmp_path / "o", directions=dirs)
    assert res.summary["num_train_images"] == 4 and res.summary["num_eval_images"] == 1
    assert res.summary["metrics"]["num_images"] == 1
    before = json.loads((tmp_path / "o" / "analysis_before" / "analysis.json").read_text())
    assert len(before["images"]) == 1 and before["rule"]["mask_thr"] == 4.0


def test_faithful_flag_gives_the_reference_settings_and_explicit_options_win(tmp_path):
    from sinder.commands import repair as cmd
    from sinder.repair.config import FAITHFUL_RULE

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    base = ["planted:small", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    faithful = cmd.repair_config(parser.parse_args([*base, "--faithful"]))
    assert faithful.rule == FAITHFUL_RULE and faithful.order == "sequential" and faithful.plateau_patience == 0
    assert faithful.window == 1000 and faithful.stop_skip_ratio == 0.75
    default = cmd.repair_config(parser.parse_args(base))
    assert default.rule == RepairConfig().rule and default.order == "shuffle" and default.plateau_patience > 0
    mixed = cmd.repair_config(parser.parse_args([*base, "--faithful", "--norm-gate", "2", "--kernel", "5"]))
    assert mixed.rule.norm_gate == 2 and mixed.rule.skip_less_than == 3 and mixed.rule.border == 2


def _stop_run(out=None, **kw):
    bb, dirs = tiny_backbone()
    cfg = RepairConfig(**({"lr": 0.05, "progress": False, "export": False, "analysis": False, "checkpoint_every": 1} | kw))
    rows: list[dict] = []
    res = repair(bb, photos(5), cfg, eval_images=photos(2, seed=9), out_dir=out, directions=dirs, on_step=rows.append)
    return res, rows


def test_a_clean_pass_over_the_training_images_stops_the_run():
    """Once no image qualifies for a whole pass, nothing can change: stop there (the reference waits for 750 skips)."""
    res, rows = _stop_run(max_steps=400, plateau_patience=0)
    s = res.summary
    assert s["stop_reason"] == "clean_pass" and s["optimizer_steps"] > 0
    assert all(r["layer"] is None for r in rows[-5:]) and rows[-6]["layer"] is not None
    assert s["metrics"]["after"]["high_norm_rate"] == 0


def test_the_held_out_residual_plateau_stops_the_run_and_resumes_exactly(tmp_path):
    kw = dict(max_steps=400, stop_when_clean=False, plateau_every=4, plateau_patience=3)
    res, rows = _stop_run(**kw)
    s = res.summary
    assert s["stop_reason"] == "residual_plateau" and s["steps"] < 400
    checks = [r for r in rows if "residual" in r]
    assert [r["step"] for r in checks] == list(range(4, s["steps"] + 1, 4))
    # the last `patience` checks did not improve on the best before them by 1%
    best = min(c["residual"]["energy_along_direction"] for c in checks[:-3])
    assert all(c["residual"]["energy_along_direction"] >= best * 0.99 for c in checks[-3:])
    # interrupted before the stop and resumed: the same stop step and the same ε
    _stop_run(out=tmp_path / "o", **(kw | {"max_steps": s["steps"] - 5}))
    again, _ = _stop_run(out=tmp_path / "o", **(kw | {"resume": True}))
    assert again.summary["stop_reason"] == "residual_plateau" and again.summary["steps"] == s["steps"]
    assert all(torch.equal(again.epsilon[k], res.epsilon[k]) for k in res.epsilon)
