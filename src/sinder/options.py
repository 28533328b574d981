"""The options every command shares, defined once, and the declarative checks all configs use.

A config field declared with :func:`option` carries its :class:`Check` (a range, a choice, a kind),
its flag and its help. :func:`validate` reads the checks (one wording for every error: ``--flag
must be …, got …``), :func:`add_option` makes the command-line flag from the same declaration
(type, choices, help with the accepted values and the default), and the test suite generates a bad
value for every checked field of every config (``tests/test_options.py``).

Shared options live in small mixins that a command's config inherits, so each is defined once with
one meaning: :class:`RunOptions` (device, batch size, resolution, progress, rule), :class:`Seeded`,
:class:`Directions`, :class:`Autocast` and :class:`Overwrite`. A config that needs another
default redeclares the field with :func:`override`, which keeps its check, flag and help.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

import torch

from .detect import DefectRule
from .errors import ConfigError
from .images import MAX_RESOLUTION, MIN_RESOLUTION
from .runtime import DEVICES, resolve_device


@dataclass(frozen=True)
class Check:
    """A declarative constraint on one value: its kind (``int``, ``number``, ``choice``, ``bool``,
    ``device``, ``type``), an optional range (``low`` < value when ``strict_low``), the choices, and
    whether None is allowed."""

    kind: str
    low: float | None = None
    high: float | None = None
    strict_low: bool = False
    strict_high: bool = False
    choices: tuple = ()
    optional: bool = False
    unit: str = ""
    of: type | None = None

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            if self.strict_low or self.strict_high:
                return f"in {'(' if self.strict_low else '['}{self.low:g}, {self.high:g}{')' if self.strict_high else ']'}"
            return f"between {self.low:g} and {self.high:g}{self.unit}"
        if self.low is not None:
            return f"{'>' if self.strict_low else '>='} {self.low:g}{self.unit}"
        return f"{'<' if self.strict_high else '<='} {self.high:g}{self.unit}" if self.high is not None else ""

    def describe(self) -> str:
        """The accepted values, in words (the help and the errors say this)."""
        if self.kind == "choice":
            return ", ".join(map(str, self.choices[:-1])) + f" or {self.choices[-1]}"
        if self.kind == "device":
            return "auto, cpu, cuda or cuda:N"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "type":
            return f"a {self.of.__name__}"
        noun = "an integer" if self.kind == "int" else "a number"
        return f"{noun} {self._range()}".strip()

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused (None: accepted)."""
        if value is None:
            return None if self.optional else f"must be {self.describe()}, got None"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": number and math.isfinite(value),
            "choice": value in self.choices,
            "bool": isinstance(value, bool),
            "device": isinstance(value, str) and (value in DEVICES or re.fullmatch(r"cuda:\d+", value) is not None),
            "type": self.of is not None and isinstance(value, self.of),
        }[self.kind]
        if not ok:
            return f"must be {self.describe()}, got {value!r}"
        if self.kind in ("int", "number"):
            low_bad = self.low is not None and (value <= self.low if self.strict_low else value < self.low)
            high_bad = self.high is not None and (value >= self.high if self.strict_high else value > self.high)
            if low_bad or high_bad:
                return f"must be {self._range()} (got {value!r})"
        return None

    def bad_values(self) -> list:
        """Values this check refuses (for the generated bad-value test)."""
        out: list = {"choice": ["nonsense"], "device": ["tpu"], "bool": ["yes"], "type": [1.5]}.get(self.kind, ["x"])
        if self.low is not None:
            out.append(int(self.low) if self.strict_low else int(math.floor(self.low)) - 1)
        if self.high is not None:
            out.append(self.high if self.strict_high else int(math.ceil(self.high)) + 1)
        return out


def integer(low: float | None = None, high: float | None = None, *, optional: bool = False, unit: str = "") -> Check:
    return Check("int", low, high, optional=optional, unit=unit)


def number(
    low: float | None = None, high: float | None = None, *, above: float | None = None, below: float | None = None, optional: bool = False
) -> Check:
    """A finite number ≥ ``low`` (or > ``above``) and ≤ ``high`` (or < ``below``)."""
    return Check(
        "number",
        above if above is not None else low,
        below if below is not None else high,
        strict_low=above is not None,
        strict_high=below is not None,
        optional=optional,
    )


def one_of(*choices: Any) -> Check:
    return Check("choice", choices=choices)


FLAG = Check("bool")


def option(
    default: Any = MISSING, *, check: Check, help: str, flag: str | None = None, factory: Any = MISSING, none: str | None = None
) -> Any:
    """A config field with its check, its flag (default ``--field-name``), its help and what a None
    default means (``none``)."""
    meta = {"check": check, "help": help, "flag": flag, "none": none}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def override(owner: type, name: str, default: Any) -> Any:
    """``owner``'s field ``name`` with another default: the same check, flag and help."""
    return field(default=default, metadata=owner.__dataclass_fields__[name].metadata)


def flag_of(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def checked_fields(config: Any) -> list[Field]:
    """The fields of a config class or instance that carry a check."""
    return [f for f in fields(config) if "check" in f.metadata]


def validate(config: Any) -> None:
    """Every declared check of ``config``; the first failure is a one-line ``ConfigError``."""
    for f in checked_fields(config):
        problem = f.metadata["check"].problem(getattr(config, f.name))
        if problem:
            raise ConfigError(f"{flag_of(f)} {problem}")


def help_text(config: type, name: str) -> str:
    """The help of ``config``'s field ``name``: its sentence, the accepted values and the default
    (a flag's sentence says what it does)."""
    f = config.__dataclass_fields__[name]
    check = f.metadata["check"]
    if check.kind in ("bool", "type"):
        return f.metadata["help"]
    none = f.metadata.get("none")
    shown = f"{f.default:g}" if isinstance(f.default, float) else f.default
    default = "" if f.default is MISSING else f"; default: {none}" if f.default is None and none else f"; default {shown}"
    return f"{f.metadata['help']} ({check.describe()}{default})"


def add_option(group: argparse._ActionsContainer, config: type, name: str, **kwargs: Any) -> None:
    """The command-line flag of ``config``'s field ``name``, from its declaration. A bool with a
    True default becomes ``--no-NAME``; a False one ``--NAME``. Values are checked when the config
    is built, with the same words."""
    f = config.__dataclass_fields__[name]
    check, flag = f.metadata["check"], flag_of(f)
    spec: dict[str, Any] = {"dest": name, "help": help_text(config, name)}
    if check.kind == "bool":  # True by default: --no-FLAG turns it off; False: --FLAG turns it on
        spec.update(action="store_false" if f.default is True else "store_true")
        flag = "--no-" + flag[2:] if f.default is True else flag
    else:
        spec["default"] = None if f.default is MISSING else f.default
        if check.kind in ("int", "number"):
            spec.update(type=int if check.kind == "int" else float, metavar=flag[2:].upper().replace("-", "_"))
        elif check.kind == "choice":
            spec.update(choices=check.choices, type=type(check.choices[0]))
    group.add_argument(flag, **(spec | kwargs))


def options_from_args(config: type, args: argparse.Namespace) -> dict[str, Any]:
    """The values ``args`` holds for ``config``'s declared options (flags made by :func:`add_option`;
    the rule has flags of its own); None means not given."""
    names = {f.name for f in checked_fields(config) if f.metadata["check"].kind != "type"}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


# -- the shared options ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """How a command runs a model on images: where, how many at a time, at which size, with which
    defect rule, and whether it draws progress bars."""

    device: str = option(
        "auto",
        check=Check("device"),
        help="where the model runs: a model given by spec is loaded there and a module you pass is moved there "
        "(auto: a spec on CUDA when available, a module where it already is)",
    )
    batch_size: int = option(8, check=integer(1), help="images per forward pass")
    resolution: int | None = option(
        None,
        check=integer(MIN_RESOLUTION, MAX_RESOLUTION, optional=True, unit=" px"),
        help="crop side in px (square crops; the short side with analyze's --crop aspect)",
        none="the model's native size",
    )
    progress: bool = option(True, check=FLAG, help="hide the progress bars (they are only drawn on a terminal anyway)", flag="--progress")
    rule: DefectRule = option(check=Check("type", of=DefectRule), help="what a defect is", factory=DefectRule, flag="rule")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class Seeded:
    seed: int = option(0, check=integer(), help="random seed (image order, control directions)")


@dataclass(frozen=True)
class Directions:
    directions: str = option(
        "exact",
        check=one_of("exact", "montecarlo"),
        help="how the defect directions are predicted: exact (Â in closed form) or the reference's Monte-Carlo least squares",
    )


@dataclass(frozen=True)
class Autocast:
    amp: str = option("auto", check=one_of("auto", "bf16", "off"), help="bf16 autocast on CUDA: auto and bf16 use it there, off never")


@dataclass(frozen=True)
class Overwrite:
    overwrite: bool = option(False, check=FLAG, help="replace earlier outputs in --out")


def place(backbone: Any, device: str) -> None:
    """Move ``backbone`` (a sinder Backbone) to ``device`` (``auto``: leave it where it is; ``cuda``
    is satisfied by any CUDA device, as a distributed rank's)."""
    if device == "auto":
        return
    target = torch.device(device)
    here = backbone.device
    if here.type == target.type and (target.index is None or here.index == target.index):
        return
    backbone.model.to(resolve_device(device))
