"""A demanding user's bad inputs: each is one actionable line on stderr, exit status 2, no
traceback, and nothing written (regressions of cases that used to trace back, exit 0 or write)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from helpers.cli import run_sinder
from PIL import Image
from safetensors.torch import save_file

pytestmark = pytest.mark.slow  # CLI runs and repairs end to end: `make test` runs them, `make test-fast` does not


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A scratch folder of good and bad inputs, shared by the cases (each writes under its own name)."""
    root = tmp_path_factory.mktemp("cli_errors")
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / "photos" / f"p{k}.png")
    (root / "junk").mkdir()
    (root / "junk" / "fake.jpg").write_text("not a jpeg")
    (root / "junk" / "notes.txt").write_text("hello")
    (root / "empty").mkdir()
    (root / "afile").write_text("mine")
    (root / "text.pth").write_text("this is not a checkpoint\n")
    torch.save(torch.nn.Linear(2, 2), root / "module.pth")  # a pickled module, never to be unpickled
    # ViT-Ti widths (192) where the ViT-S model has 384: another architecture's weights
    save_file({"norm.weight": torch.ones(192), "norm.bias": torch.zeros(192)}, root / "other_arch.safetensors")
    # A Hugging Face model folder (config.json, no sinder files) and weights of another width for it
    from transformers import Dinov2Config, Dinov2Model

    for name, width in (("hf_tiny", 32), ("hf_wide", 48)):
        cfg = Dinov2Config(hidden_size=width, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
        Dinov2Model(cfg).save_pretrained(root / name)
    from transformers import ViTConfig, ViTModel  # a transformers ViT sinder does not serve

    ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14)
    ).save_pretrained(root / "hf_vit")
    (root / "bad_analysis").mkdir()
    (root / "bad_analysis" / "analysis.json").write_text("{not json")
    return root


CASES = {
    # id: (argv with {ws} placeholders, needle in the error line, path that must not be created or None)
    "weights_pickled_module": (
        "analyze timm:vit_small_patch14_dinov2 {ws}/photos --out {ws}/o1 --weights {ws}/module.pth",
        "never unpickles",
        "o1",
    ),
    "weights_text_named_pth": (
        "analyze timm:vit_small_patch14_dinov2 {ws}/photos --out {ws}/o2 --weights {ws}/text.pth",
        "not a PyTorch checkpoint",
        "o2",
    ),
    "weights_other_architecture": (
        "analyze timm:vit_small_patch14_dinov2 {ws}/photos --out {ws}/o3 --weights {ws}/other_arch.safetensors",
        "is (192,) in the file but (384,) in the model",
        "o3",
    ),
    "weights_folder": ("repair timm:vit_small_patch14_dinov2 --data {ws}/photos --out {ws}/o5 --weights {ws}/photos", "is a folder", "o5"),
    "hf_weights_other_width": (
        "analyze hf:{ws}/hf_tiny {ws}/photos --out {ws}/o6 --weights {ws}/hf_wide/model.safetensors",
        "does not fit",
        "o6",
    ),
    "timm_unknown_name_offline": ("analyze -v timm:nonexistent {ws}/photos --out {ws}/o7", "timm has no model 'nonexistent'", "o7"),
    "analyze_only_undecodable": ("analyze planted:small {ws}/junk --out {ws}/o8", "none of the 1 input image(s) can be used", "o8"),
    "analyze_grid_too_small": (
        "analyze planted:small {ws}/photos --out {ws}/o9 --resolution 20",
        "--resolution must be between 42 and 4096 px for 14 px patches (at least 3 per side) (got 20)",
        "o9",
    ),
    # one wording for --resolution whatever the value and the command (0 used to say ">= 14 px" in
    # repair and "a positive int" in evaluate; 100000 was accepted and hung resizing to 100000 px)
    "repair_resolution_zero": (
        "repair planted:small --data {ws}/photos --out {ws}/o15 --resolution 0",
        "--resolution must be between 16 and 4096 px (got 0)",
        "o15",
    ),
    "repair_resolution_huge": (
        "repair planted:small --data {ws}/photos --out {ws}/o16 --resolution 100000",
        "--resolution must be between 16 and 4096 px (got 100000)",
        "o16",
    ),
    "evaluate_resolution_zero": (
        "evaluate planted:small --task intrinsic --data {ws}/photos --out {ws}/o17 --resolution 0",
        "--resolution must be between 16 and 4096 px (got 0)",
        "o17",
    ),
    "evaluate_resolution_huge": (
        "evaluate planted:small --task intrinsic --data {ws}/photos --out {ws}/o18 --resolution 100000",
        "--resolution must be between 16 and 4096 px (got 100000)",
        "o18",
    ),
    "analyze_resolution_huge": (
        "analyze planted:small {ws}/photos --out {ws}/o19 --resolution 100000",
        "--resolution must be between 16 and 4096 px (got 100000)",
        "o19",
    ),
    "repair_only_undecodable": ("repair planted:small --data {ws}/junk/fake.jpg --out {ws}/o10", "training image(s) can be used", "o10"),
    "repair_empty_eval_data": ("repair planted:small --data {ws}/photos --eval-data {ws}/empty --out {ws}/o11", "check --eval-data", "o11"),
    "repair_resume_missing_run": ("repair planted:small --data {ws}/photos --out {ws}/o12 --resume", "holds no repair run", "o12"),
    "demo_out_is_nonempty_dir": ("demo --out {ws}/photos", "pass --overwrite", None),
    "report_hf_model_folder": ("report {ws}/hf_tiny --out {ws}/r1.html", "holds no readable sinder run", "r1.html"),
    "report_unreadable_analysis": ("report {ws}/bad_analysis --out {ws}/r2.html", "nothing to report", "r2.html"),
    "evaluate_bad_compare_spec": (
        "evaluate planted:small --task intrinsic --data {ws}/photos --compare foo:bar --out {ws}/o13",
        "unknown model spec 'foo:bar'",
        "o13",
    ),
    "evaluate_missing_data": ("evaluate planted:small --task knn --data {ws}/nosuch --out {ws}/o14", "not found", "o14"),
    # timm models no adapter serves: one line naming what is supported (they used to trace back with
    # "TypeError ... dynamic_img_size"); the in-process test in test_backbones covers the other classes
    "timm_resnet_unsupported": (
        "analyze timm:resnet50 {ws}/photos --out {ws}/o20 --random-init",
        "ResNet is not a ViT that sinder can adapt; sinder adapts timm VisionTransformer",
        "o20",
    ),
    "hf_unsupported_class": ("analyze hf:{ws}/hf_vit {ws}/photos --out {ws}/o24", "not supported", "o24"),
    "weights_with_random_init": (
        "analyze planted:small {ws}/photos --out {ws}/o22 --weights {ws}/text.pth --random-init",
        "--weights and --random-init contradict",
        "o22",
    ),
    **(
        {}
        if torch.cuda.is_available()
        else {"device_cuda_without_cuda": ("repair planted:small --data {ws}/photos --out {ws}/o23 --device cuda", "no CUDA device", "o23")}
    ),
}
# refused before any model is loaded (no "loading MODEL" line)
BEFORE_LOADING = ("weights_with_random_init", "device_cuda_without_cuda")


@pytest.fixture(scope="module")
def outcomes(ws):
    """Every case's command run as the user runs it, two at a time: each is mostly interpreter
    start-up and imports, one core's work, so the pair takes half the wall time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(case: str):
        argv = CASES[case][0].format(ws=ws).split()
        start = time.perf_counter()
        proc = run_sinder(*argv, timeout=180)
        return argv, proc, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CASES, pool.map(one, CASES)))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(ws, outcomes, case):
    _, needle, created = CASES[case]
    argv, proc, seconds = outcomes[case]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("warning: ") and "Warning" not in ln]
    command = next(a for a in argv if not a.startswith("-"))
    # the error is one line, the last; before it only sinder's one-line progress notes ("loading MODEL")
    assert lines and lines[-1].startswith(f"sinder {command}: error: "), proc.stderr
    assert sum(": error: " in ln for ln in lines) == 1 and not any(ln[0].isspace() for ln in lines), proc.stderr
    error = lines[-1]
    assert needle in error, error
    assert "\x1b[" not in error  # no terminal colour codes copied from torch/transformers messages
    if created is not None:
        assert not (ws / created).exists()
    if case in BEFORE_LOADING:
        assert "loading" not in proc.stderr, proc.stderr
    if case == "demo_out_is_nonempty_dir":
        assert "--resume" not in error  # demo has no --resume
        assert seconds < 20  # refused before the model is built and analysed
        assert sorted(p.name for p in (ws / "photos").iterdir()) == ["p0.png", "p1.png"]
