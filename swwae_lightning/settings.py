"""One definition per setting: its name, type, default, allowed values and help, declared once.

Each setting is declared next to the code that uses it (the pooling variant owns its
temperature, the loss term its weight, the DataModule its batch sizes). The command line,
``--config`` files, the run's ``config.yaml``, the value checks, the report's grouping and
the constructors' defaults are all read from these declarations, so an extension that
registers a new setting gets all of them without editing another file.
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# The order of the groups in --help; a setting names its group.
GROUPS = ("data", "model", "what-where", "objectives", "optimization", "hardware", "run", "smoke")
# What a run is compared against its baseline on: the baseline may differ in these groups only.
METHOD_GROUPS = ("what-where", "objectives")

Check = Callable[[Any], "str | None"]  # a value -> what is wrong with it, or None


@dataclass(frozen=True)
class Setting:
    """One hyper-parameter or option. ``name`` is snake_case; its flag is ``--kebab-case``.

    ``owner`` ("pooling=soft") marks a setting that belongs to one choice of another setting:
    it is checked only when that choice is made. ``part_of`` ("predict") marks a setting that only
    the action of another setting reads: a changed value without that action is refused, since it
    would be silently ignored. ``affects_result=False`` marks bookkeeping (paths, loggers,
    hardware): the report groups runs ignoring it. ``of_method=True`` marks a setting outside the
    method groups that only a method reads (the strong view's shape, which only the terms that ask
    for a strong view use): a baseline may differ in it as in the method's own settings.
    """

    name: str
    default: Any
    help: str
    group: str
    type: Callable[[Any], Any] | None = None
    choices: Callable[[], Sequence[str]] | None = None
    check: Check | None = None
    flag: str = "value"  # "value", "switch" (--x / --no-x), "optional" (nargs='?', const) or "list" (nargs='+')
    const: Any = None
    affects_result: bool = True
    owner: str | None = None
    part_of: str | None = None
    of_method: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> list[str] | None:
        return list(self.choices()) if self.choices else None


SETTINGS: dict[str, Setting] = {}


def default_of(function: Callable, name: str) -> Any:
    """The default ``function`` gives its parameter ``name``: a setting read from a constructor's
    signature has its default written once, where ``help()`` and an IDE show it."""
    parameter = inspect.signature(function).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise ValueError(f"{getattr(function, '__qualname__', function)} has no parameter {name!r} with a default")
    return parameter.default


def declare(*settings: Setting) -> tuple[Setting, ...]:
    """Register settings; a name may be declared once (a second declaration is a programming error).

    Settings that belong to a choice of one declared here (a pooling variant's options) move to
    just after them, wherever they were declared first: ``--help`` lists an option under its owner.
    """
    for s in settings:
        if s.group not in GROUPS:
            raise ValueError(f"setting {s.name!r}: group {s.group!r} is not one of {GROUPS}")
        if s.name in SETTINGS and SETTINGS[s.name] != s:
            raise ValueError(f"setting {s.name!r} is declared twice")
        SETTINGS[s.name] = s
    names = {s.name for s in settings}
    for owned in [o for o in SETTINGS.values() if o.owner and o.owner.partition("=")[0] in names]:
        SETTINGS[owned.name] = SETTINGS.pop(owned.name)
    return settings


# ----------------------------------------------------------------------------- checks
def at_least(bound: float) -> Check:
    return lambda v: None if v is None or v >= bound else f"must be >= {bound:g}"


def greater_than(bound: float) -> Check:
    return lambda v: None if v is None or v > bound else f"must be > {bound:g}"


def within(low: float, high: float, closed_low: bool = False, closed_high: bool = False) -> Check:
    """Inside (low, high), with either end closed on request."""

    def check(v):
        ok = (v >= low if closed_low else v > low) and (v <= high if closed_high else v < high)
        return None if ok else f"must be in {'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"

    return check


# ----------------------------------------------------------------------------- parsing values
def labels_value(value) -> int | None:
    """A whole number of labels, or 'all' (None)."""
    if value is None or str(value).lower() in ("all", "none"):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number or 'all'") from None


def labels_text(labels: int | None, spec: str = "") -> str:
    """How a label count is written in names and tables (``spec``: its format): None (every label) is 'all'."""
    return "all" if labels is None else format(labels, spec)


def batches_value(value) -> int | float:
    """Lightning's convention: an int is a number of batches, a float a fraction."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number of batches or a fraction") from None


def tags_value(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(t) for t in value]
    return [t for t in str(value).split(",") if t]


def convert(setting: Setting, value, where: str, sep: str = " "):
    """A value from a flag, a config file or a constructor, checked as the setting declares.

    Raises ValueError with one line naming ``where``, the value and what would be right.
    """
    if value is None:
        return None
    said = f"{where}{sep}{value!r}" if isinstance(value, str) else f"{where}{sep}{value}"
    if setting.flag == "switch":
        if not isinstance(value, bool):
            raise ValueError(f"{said} is not true or false")
    elif setting.type is not None:
        if isinstance(value, bool) and setting.type in (int, float):
            raise ValueError(f"{said} is not a number")
        try:
            value = setting.type(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            raise ValueError(
                f"{said} is not a whole number"
                if setting.type is int
                else f"{said} is not a number"
                if setting.type is float
                else f"{where}{sep}{error}"
            ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}{sep}{value} must be a finite number")
    allowed = setting.allowed()
    if allowed is not None and value not in allowed:
        raise ValueError(f"{where}{sep}{value!r} is not one of {allowed}")
    problem = setting.check(value) if setting.check else None
    if problem:
        raise ValueError(f"{where}{sep}{value} {problem}")
    return value


def _applies(setting: Setting, values: dict) -> bool:
    if setting.owner is None:
        return True
    key, _, choice = setting.owner.partition("=")
    return str(values.get(key)) == choice


def _spelling(setting: Setting, style: str) -> tuple[str, str]:
    """The setting's name as the user wrote it and what joins it to a value: ``--lr 0.1`` or ``lr=0.1``."""
    return (setting.option, " ") if style == "flag" else (setting.name, "=")


def _check_read(setting: Setting, value: Any, values: dict, style: str) -> None:
    """A ``part_of`` setting given a value of its own while its action is off is an error, not a no-op."""
    action = setting.part_of
    if action is None or action not in values or values[action] or value == setting.default:
        return
    (given, sep), needed = _spelling(setting, style), _spelling(SETTINGS[action], style)[0]
    raise ValueError(f"{given}{sep}{value} is read by {needed} only; give {needed} too, or leave {given} out")


def check_all(values: dict, style: str = "flag") -> dict:
    """Every declared setting present in ``values``, converted and checked; returns the converted dict.

    ``style`` names values as the user wrote them: ``--lr`` on the command line, ``lr=`` in Python.
    """
    out = dict(values)
    for name, value in values.items():
        setting = SETTINGS.get(name)
        if setting is None or not _applies(setting, values):
            continue
        out[name] = convert(setting, value, *_spelling(setting, style))
        _check_read(setting, out[name], values, style)
    return out


def defaults(groups: Iterable[str] | None = None) -> dict:
    """The default of every declared setting (of ``groups`` only, when given)."""
    wanted = set(groups) if groups is not None else None
    return {s.name: s.default for s in SETTINGS.values() if wanted is None or s.group in wanted}


def complete(given: dict, names: Iterable[str], what: str) -> dict:
    """A constructor's settings: ``given`` checked, the rest of ``names`` filled with their defaults.

    An unknown name is an error that names it: a typo must not be silently ignored.
    """
    known = {name: SETTINGS[name].default for name in names}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{what} got unknown setting(s) {unknown}; it takes {sorted(known)}")
    return check_all({**known, **given}, style="python")


def names_in(groups: Iterable[str]) -> list[str]:
    wanted = set(groups)
    return [s.name for s in SETTINGS.values() if s.group in wanted]


def bookkeeping() -> set[str]:
    """Settings that do not change what is learned: the report leaves them out of an experiment's key."""
    return {s.name for s in SETTINGS.values() if not s.affects_result}


def method_settings() -> set[str]:
    """Settings a baseline may differ in from the runs it is the baseline of."""
    return set(names_in(METHOD_GROUPS)) | {s.name for s in SETTINGS.values() if s.of_method}


# ----------------------------------------------------------------------------- the command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per declared setting, grouped as in ``GROUPS``; absent flags stay absent (SUPPRESS)."""
    for group in GROUPS:
        members = [s for s in SETTINGS.values() if s.group == group]
        if not members:
            continue
        arguments = parser.add_argument_group(group)
        for s in members:
            kwargs: dict[str, Any] = {"dest": s.name, "help": f"{s.help} (default: {s.default})"}
            if s.flag == "switch":
                kwargs["action"] = argparse.BooleanOptionalAction
            else:  # kept as text here: check_all converts and checks flags like every other source
                if s.flag == "optional":
                    kwargs.update(nargs="?", const=s.const)
                elif s.flag == "list":
                    kwargs.update(nargs="+")
                if s.choices:
                    kwargs["metavar"] = "{" + ",".join(s.allowed()) + "}"
            arguments.add_argument(s.option, **kwargs)
            if "_" in s.name:  # --snake_case too (what a W&B sweep agent passes), left out of --help
                arguments.add_argument(f"--{s.name}", **{**kwargs, "help": argparse.SUPPRESS})


__all__ = [
    "Setting",
    "SETTINGS",
    "declare",
    "defaults",
    "default_of",
    "complete",
    "check_all",
    "convert",
    "add_arguments",
    "at_least",
    "greater_than",
    "within",
    "labels_value",
    "labels_text",
    "batches_value",
    "tags_value",
    "bookkeeping",
    "method_settings",
    "names_in",
]
