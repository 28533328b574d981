"""Data-parallel repair: 2 processes on gloo (CPU) take identical steps; only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers.repair import photos, tiny_backbone

from sinder.repair import RepairConfig, repair

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
]  # CLI runs and repairs end to end: `make test` runs them, `make test-fast` does not

STEPS = 3


def _config(batch_size: int) -> RepairConfig:
    return RepairConfig(max_steps=STEPS, batch_size=batch_size, lr=0.05, checkpoint_every=1, progress=False)


def _worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        bb, dirs = tiny_backbone()
        res = repair(bb, photos(6), _config(1), eval_images=photos(2, seed=9), out_dir=Path(tmp) / "out", directions=dirs)
        save_file({k: v.contiguous() for k, v in res.epsilon.items()}, f"{tmp}/eps{rank}.safetensors")
        info = {"written": [str(p) for p in res.written], "images_seen": res.summary["images_seen"], "steps": res.summary["steps"]}
        Path(f"{tmp}/info{rank}.json").write_text(json.dumps(info))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_agree_and_match_one_process_with_the_same_global_batch(tmp_path):
    from safetensors.torch import load_file

    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    eps = [load_file(str(tmp_path / f"eps{r}.safetensors")) for r in range(2)]
    info = [json.loads((tmp_path / f"info{r}.json").read_text()) for r in range(2)]
    for k in eps[0]:
        assert torch.equal(eps[0][k], eps[1][k]), k  # identical steps on both ranks
    assert any(v.abs().max() > 0 for v in eps[0].values())
    assert info[0]["images_seen"] == info[1]["images_seen"] == 2 * STEPS  # each rank its own image
    assert info[1]["written"] == [] and len(info[0]["written"]) >= 4  # rank 0 alone writes
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors",
        "config.json",
        "log.jsonl",
        "sigma.safetensors",
        "summary.json",
        "weights",
    ]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS and all(r["images"] == 2 for r in rows)  # global, not rank 0's
    assert rows[0]["layers"] == [1, 1] and rows[0]["defects"] >= 6
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2

    # one process with batch 2 sees the same images per step (positions p, p+1): same update
    bb, dirs = tiny_backbone()
    single = repair(bb, photos(6), _config(2), eval_images=photos(2, seed=9), directions=dirs)
    for k, v in single.epsilon.items():
        assert (v - eps[0][k]).abs().max() <= 1e-5 * max(v.abs().max().item(), 1e-8), k


def test_resume_refuses_a_checkpoint_that_only_some_ranks_can_see(tmp_path):
    """Only rank 0 writes checkpoints: without a shared --out another rank would start from scratch
    and the ranks would diverge (then hang in a collective). All ranks must decide alike."""
    from sinder.errors import ConfigError
    from sinder.repair.api import _resume_from
    from sinder.repair.distributed import DistContext

    class OtherRank(DistContext):
        """Rank 0 of two; the other rank's contributions to the next all-reduces are scripted."""

        def __init__(self, sees_checkpoint: bool) -> None:
            super().__init__(rank=0, world_size=2)
            self.script = [0.0, 1.0] if sees_checkpoint else [1.0, 0.0]  # agree(found), agree(not found)

        def all_reduce_sum(self, t):
            return t + self.script.pop(0)

    ckpt = tmp_path / "checkpoint.safetensors"
    ckpt.write_bytes(b"")
    cfg = RepairConfig(resume=True)
    assert _resume_from(ckpt, cfg, OtherRank(sees_checkpoint=True)) is True
    with pytest.raises(ConfigError):
        _resume_from(ckpt, cfg, OtherRank(sees_checkpoint=False))
    ckpt.unlink()  # seen by no rank (the other one scripted as seeing it): also refused
    with pytest.raises(ConfigError):
        _resume_from(ckpt, cfg, OtherRank(sees_checkpoint=True))
    assert _resume_from(ckpt, cfg, DistContext()) is False and _resume_from(None, cfg, DistContext()) is False
