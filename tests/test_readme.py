"""Every example in README.md and docs/*.md works: python blocks run (on planted:small, in a folder of
scikit-image photos), every `sinder ...` line parses with the real CLI parser and names only
options that exist, and the cheap command lines run. Substitutions are listed below, each with
its reason; an example that is neither run nor listed fails the test."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.photos import write_photos

from sinder.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see the fixture

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]  # README first: its examples run first

# python blocks: text replaced before the block runs -> (replacement, why)
PY_SUBSTITUTIONS = {
    'load_backbone("dinov2:vitl14", weights="dinov2_vitl14_pretrain.pth", device="cuda")': (
        'load_backbone("planted:small", device="cpu")',
        "no hub weights and no GPU here: the planted ViT-S/14 is built from a seed",
    ),
    "RepairConfig()": ("RepairConfig(max_steps=2)", "two steps run the same code as a full repair, in seconds"),
    'torch.load("my_finetuned.pth", weights_only=True)': (
        '__import__("sinder.backbones").backbones.load_backbone("planted:small").model.state_dict()',
        "no user checkpoint here: the planted model's weights stand for the fine-tuned ones",
    ),
}
PY_NOT_RUN: dict[str, str] = {}  # first line of a python block -> why it is not run (none today)

# command lines that run (README order), keyed by their first three words -> extra arguments;
# the others (evaluate on ImageNet/VOC, torchrun on 8 GPUs, the synopses) are parsed only
RUN = {
    "sinder analyze dinov2:vitg14": [],
    "sinder repair dinov2:vitg14": ["--max-steps", "2"],  # two steps: the same code path in seconds
    "sinder report run_g": [],
}
# text replaced in those lines before they run -> (replacement, why)
SHELL_SUBSTITUTIONS = {
    "dinov2:vitg14": ("planted:small", "no ViT-g weights here: the planted model is built from a seed"),
    "--weights dinov2_vitg14_pretrain.pth": ("", "the planted model has no weights file"),
    "--device cuda": ("--device cpu", "no GPU here"),
    "/imagenet/": ("imagenet/", "a few photos in the test's folder stand for ImageNet"),
}
COMMANDS = {"sinder", "torchrun", "make", "pip"}  # first words of the lines of a command block
OUTPUT_BLOCKS = {"held-out photos, last layer": "what `make demo` prints, not a command"}  # first-line prefix -> why

# the folders the examples read, filled with scikit-image photos
PHOTOS = {
    "photos": ("astronaut", "coffee"),
    "imagenet/train": ("rocket", "camera", "brick"),
    "imagenet/val": ("chelsea",),
    "val": ("chelsea",),
    "val_images": ("astronaut", "chelsea"),
}


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    doc: str = "README.md"  # the file, relative to the repository

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def doc_blocks(path: Path) -> list[Block]:
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    doc = str(path.relative_to(ROOT))
    start = None
    for i, line in enumerate(lines):
        fence = re.match(r"^```\s*(\S*)\s*$", line)
        if fence and start is None:
            start, lang = i, fence.group(1)
        elif fence:
            blocks.append(Block(lang, "\n".join(lines[start + 1 : i]), start + 1, doc))
            start = None
    assert start is None, f"{doc}:{start + 1}: unclosed code fence"
    return blocks


def readme_blocks() -> list[Block]:
    """Every fenced block of README.md and docs/*.md, in that order."""
    return [b for path in DOCS for b in doc_blocks(path)]


def first_line(block: Block) -> str:
    return block.code.strip().splitlines()[0].strip()


def kind(block: Block) -> str:
    """python, command (a shell block: each line starts with a command) or output (listed in OUTPUT_BLOCKS)."""
    if block.lang == "python":
        return "python"
    assert block.lang in ("", "bash", "sh", "shell", "console"), f"{block.where}: unexpected language {block.lang!r}"
    if first_line(block).split()[0] in COMMANDS:
        return "command"
    assert any(first_line(block).startswith(p) for p in OUTPUT_BLOCKS), f"{block.where}: neither a command nor known output"
    return "output"


def python_blocks() -> list[Block]:
    return [b for b in readme_blocks() if kind(b) == "python"]


def command_blocks() -> list[Block]:
    return [b for b in readme_blocks() if kind(b) == "command"]


def logical_lines(block: Block) -> list[str]:
    """Lines with ``\\`` continuations and indented synopsis continuations joined; comments dropped."""
    joined: list[str] = []
    for raw in block.code.splitlines():
        if joined and (raw[:1].isspace() or joined[-1].endswith("\\")):
            joined[-1] = joined[-1].rstrip("\\") + " " + raw.strip()
        elif raw.strip():
            joined.append(raw.strip())
    return [re.sub(r"\s+#.*$", "", line) for line in joined]


def sinder_words(line: str) -> list[str] | None:
    """The words of a `sinder ...` line (`torchrun ... -m sinder ...` included, a synopsis's [ ] dropped); None for other tools."""
    words = line.replace("[", " ").replace("]", " ").split()
    if words[0] == "torchrun":
        words = words[words.index("-m") + 1 :]
    return words if words[0] == "sinder" else None


def run_key(line: str) -> str:
    return " ".join(line.split()[:3])


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def check_options(words: list[str], where: str) -> None:
    """Every --option exists as spelt (argparse would accept abbreviations) and every listed choice is valid."""
    actions = {o: a for a in subparsers()[words[1]]._actions for o in a.option_strings}
    for i, word in enumerate(words):
        for name in (w for w in word.split("|") if w.startswith("--")):
            assert name in actions, f"{where}: sinder {words[1]} has no option {name}"
            nxt = words[i + 1] if i + 1 < len(words) else "--"
            if actions[name].choices and not nxt.startswith("--"):
                bad = [c for c in nxt.split("|") if c not in actions[name].choices]
                assert not bad, f"{where}: {name} does not accept {bad}"


def parse_concrete(words: list[str], where: str) -> argparse.Namespace:
    """Parse a concrete line; a `...` right after the command stands for the model and its options."""
    args = ["MODEL" if i == 2 and w == "..." else w for i, w in enumerate(words)][1:]
    try:
        return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: sinder's parser rejects {' '.join(words)}")


def sinder_lines() -> list[tuple[str, str]]:
    return [(b.where, line) for b in command_blocks() for line in logical_lines(b) if sinder_words(line)]


@pytest.fixture
def photo_dir(tmp_path, monkeypatch):
    """A working folder holding the photo folders the examples name."""
    for folder, names in PHOTOS.items():
        write_photos(tmp_path / folder, tuple(names), ".png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- the tests ---------------------------------------------------------------------------


def test_readme_blocks_are_all_accounted_for():
    kinds = [kind(b) for b in readme_blocks()]  # each block: run, parsed, or output listed with a reason
    assert kinds.count("python") >= 1 and kinds.count("command") >= 3
    py_text = "\n".join(b.code for b in python_blocks())
    assert all(old in py_text for old in PY_SUBSTITUTIONS), "a substitution no longer matches README.md"
    assert set(PY_NOT_RUN) <= {first_line(b) for b in python_blocks()}
    found = {run_key(line) for _, line in sinder_lines()}
    assert set(RUN) <= found, f"examples to run not in README.md: {set(RUN) - found}"
    run_text = "\n".join(line for _, line in sinder_lines() if run_key(line) in RUN)
    assert all(old in run_text for old in SHELL_SUBSTITUTIONS), "a substitution no longer matches README.md"


def test_every_sinder_line_parses_with_the_real_parser():
    lines = sinder_lines()
    assert len(lines) >= 10
    for where, line in lines:
        words = sinder_words(line)
        assert words[1] in subparsers(), f"{where}: no command sinder {words[1]}"
        check_options(words, where)
        if "[" not in line and "|" not in line:  # a synopsis lists alternatives; a concrete line must parse
            assert parse_concrete(words, where).command == words[1]


def test_other_command_lines_name_real_targets():
    makefile = (ROOT / "Makefile").read_text()
    for block in command_blocks():
        for line in logical_lines(block):
            words = line.split()
            assert words[0] in COMMANDS, f"{block.where}: unknown command {words[0]}"
            if words[0] == "make":
                assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), f"{block.where}: no make target {words[1]}"


def test_inline_options_exist():
    """`--option` in the prose names an option of some sinder command or of a benchmark script."""
    prose = re.sub(r"```.*?```", "", "\n".join(p.read_text(encoding="utf-8") for p in DOCS), flags=re.S)
    options = {o for span in re.findall(r"`([^`]+)`", prose) for o in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span)}
    known = {o for p in [build_parser(), *subparsers().values()] for a in p._actions for o in a.option_strings}
    bench = "\n".join(p.read_text() for p in (ROOT / "benchmarks").glob("*.py"))
    missing = sorted(o for o in options if o not in known and f'"{o}"' not in bench)
    assert len(options) > 10 and not missing, f"the docs name options nothing defines: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: b.where)
def test_python_example_runs(block, photo_dir):
    if first_line(block) in PY_NOT_RUN:
        pytest.skip(PY_NOT_RUN[first_line(block)])
    code = block.code
    for old, (new, _why) in PY_SUBSTITUTIONS.items():
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, block.where, "exec"), namespace)  # noqa: S102 - our own docs
    if 'analyze(bb, ["photos/"]' in block.code:  # issue #8: it reported "file not found" on the existing folder
        assert len(namespace["result"].summary["images"]) == len(PHOTOS["photos"])
        assert namespace["result"].summary["skipped"] == []
        assert json.loads(Path("analysis/analysis.json").read_text())["skipped"] == []
    if 'out_dir="run"' in block.code:
        assert Path("run/summary.json").is_file() and Path("run/report.html").is_file()


@pytest.mark.slow
def test_cheap_command_lines_run(photo_dir):
    for where, line in sinder_lines():
        key = run_key(line)
        if key not in RUN:
            continue
        for old, (new, _why) in SHELL_SUBSTITUTIONS.items():
            line = line.replace(old, new)
        assert main(shlex.split(line)[1:] + RUN[key]) == 0, f"{where}: {line}"
    assert Path("an_g/analysis.json").is_file()
    assert Path("run_g/summary.json").is_file() and Path("run_g/report.html").is_file()


def test_readme_is_a_readme_and_its_links_resolve():
    """At most ~150 lines (the manual lives in docs/), and every relative link of README.md and
    docs/*.md names a file that exists."""
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.relative_to(ROOT)}: broken link {target}"
