"""One configuration style (issue #19): the shared run options are defined once, and every
declared check is read by the config's validation, the command-line help and this generated
bad-value test (a bad value for every checked field of every config, and on the command line for
every numeric flag the checks declare)."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from sinder.analyze import AnalyzeConfig
from sinder.cli import build_parser, main
from sinder.compare import CompareConfig
from sinder.errors import ConfigError
from sinder.evaluate import EvaluateConfig
from sinder.fixes import FIXES, ClampFix, InterpolationFix
from sinder.options import Autocast, Directions, Overwrite, RunOptions, Seeded, checked_fields, flag_of
from sinder.repair.config import RepairConfig
from sinder.report.config import ReportConfig

CONFIGS = (AnalyzeConfig, RepairConfig, EvaluateConfig, CompareConfig, ReportConfig, ClampFix, InterpolationFix)
SHARED = (RunOptions, Seeded, Directions, Autocast, Overwrite)
BAD = [(c, f.name, bad) for c in CONFIGS for f in checked_fields(c) for bad in f.metadata["check"].bad_values()]


@pytest.mark.parametrize(("config", "name", "bad"), BAD, ids=[f"{c.__name__}.{n}={b!r}" for c, n, b in BAD])
def test_every_checked_field_refuses_a_bad_value_in_one_line_naming_its_flag(config, name, bad):
    f = config.__dataclass_fields__[name]
    with pytest.raises(ConfigError) as err:
        config(**{name: bad})
    message = str(err.value)
    assert message.startswith(f"{flag_of(f)} must be "), message
    assert "\n" not in message and repr(bad) in message


def test_shared_options_are_defined_once_and_each_config_adds_only_its_own():
    """No field is declared by two configs: a shared one comes from its mixin (a config may change
    its default with ``override``, keeping the mixin's check, flag and help)."""
    shared = {f.name: f for mixin in SHARED for f in fields(mixin)}
    assert set(shared) == {"device", "batch_size", "resolution", "progress", "rule", "seed", "directions", "amp", "overwrite"}
    own: dict[str, str] = {}
    for config in (AnalyzeConfig, RepairConfig, EvaluateConfig, CompareConfig, ReportConfig):
        for f in fields(config):
            if f.name in shared:
                assert f.metadata == shared[f.name].metadata, (config.__name__, f.name)
                continue
            assert f.name not in own, f"{f.name} is declared by {own[f.name]} and {config.__name__}"
            own[f.name] = config.__name__
    assert RepairConfig().batch_size == 1 and EvaluateConfig().batch_size == 32 and AnalyzeConfig().batch_size == 8
    # one meaning each: the same values everywhere (amp was a bool in evaluate; progress defaulted to False in compare)
    assert {c().amp for c in (RepairConfig, EvaluateConfig)} == {"auto"}
    assert all(c().progress for c in (AnalyzeConfig, RepairConfig, EvaluateConfig, CompareConfig))


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMAND_CONFIGS = {
    "analyze": (AnalyzeConfig,),
    "repair": (RepairConfig,),
    "evaluate": (EvaluateConfig,),
    "compare": (CompareConfig, *FIXES.values()),
    "report": (ReportConfig,),
}


def _declared(command: str):
    """(flag, check) of every option of ``command``'s parser made from a declaration."""
    parser = _subparsers()[command]
    declared = {f.name: f for config in COMMAND_CONFIGS[command] for f in checked_fields(config)}
    out = []
    for action in parser._actions:
        f = declared.get(action.dest) or next((d for d in declared.values() if flag_of(d) in action.option_strings), None)
        if f is not None and action.option_strings and action.help != argparse.SUPPRESS:  # hidden aliases aside
            out.append((action, f))
    return out


@pytest.mark.parametrize("command", list(COMMAND_CONFIGS))
def test_the_help_shows_each_declared_options_accepted_values_and_default(command):
    found = _declared(command)
    assert len(found) >= 2, command
    for action, f in found:
        check = f.metadata["check"]
        if check.kind not in ("bool", "type"):
            assert check.describe() in action.help, (command, action.option_strings)
            if f.default is not None and not isinstance(f.default, bool) and action.default is not None:
                shown = f"{f.default:g}" if isinstance(f.default, float) else f.default
                assert f"default {shown}" in action.help, (command, action.option_strings)


ARGS = {
    "analyze": "analyze planted:small {photo} --out {out}",
    "repair": "repair planted:small --data {photo} --out {out}",
    "evaluate": "evaluate planted:small --task intrinsic --data {photo} --out {out}",
    "compare": "compare planted:small --data {photo} --eval {photo} --out {out}",
    "report": "report {photo} --out {out}/r.html",
}
CLI_BAD = [
    (command, action.option_strings[0], bad)
    for command in COMMAND_CONFIGS
    for action, f in _declared(command)
    if f.metadata["check"].kind in ("int", "number")
    for bad in f.metadata["check"].bad_values()[1:2]  # a number out of range (a non-number is argparse's to refuse)
]


@pytest.mark.parametrize(("command", "flag", "bad"), CLI_BAD, ids=[f"{c} {f} {b}" for c, f, b in CLI_BAD])
def test_the_command_line_refuses_each_out_of_range_value_in_one_line_before_any_work(command, flag, bad, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"")  # never read: the value is refused first
    argv = ARGS[command].format(photo=photo, out=tmp_path / "out").split() + [flag, str(bad)]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sinder {command}: error: {flag} must be "), lines
    assert not (tmp_path / "out").exists()


def test_device_has_one_meaning_a_module_stays_with_auto_and_moves_when_named():
    import torch
    from helpers.models import tiny_vit

    from sinder.options import place

    bb = tiny_vit()
    place(bb, "auto")  # a module you pass stays where it is
    assert bb.device.type == "cpu"
    place(bb, "cpu")
    assert next(bb.model.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available; use --device cpu"):
            place(bb, "cuda")
