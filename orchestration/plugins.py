"""Extensions by name: files or modules imported before any setting is read.

A plugin registers poolings, loss terms or datasets when it is imported. It is named with
``--plugins`` (or a ``plugins:`` key in a config file), written to the run's config.yaml, and
passed on to every process the framework starts (DDP ranks, report sweeps, ``--resume``), so
its settings are known wherever the run goes. Installed packages register through the
entry-point group ``swwae_lightning.plugins`` and are found without any flag.

A plugin runs code, so only the person at the command line chooses one: ``--plugins``, their
``--config`` file, their own run's config.yaml on ``--resume``, or an installed package. A file
from elsewhere (a checkpoint for ``--evaluate`` or ``--predict``, someone's run folder given to the
report) may *name* plugins, but naming one never imports it (``require_chosen``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import yaml

from swwae_lightning import settings as S

ENTRY_POINT_GROUP = "swwae_lightning.plugins"
ENVIRONMENT = "SWWAE_PLUGINS"  # os.pathsep-separated, for processes started without our command line

_loaded: dict[str, ModuleType] = {}
_installed_loaded = False
_installed_modules: set[str] = set()  # the modules the entry points name: chosen by installing their package


class PluginError(ImportError):
    """A plugin that cannot be found: one line, exit status 2."""


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def canonical(spec: str) -> str:
    """A file as its absolute path (so config.yaml works from any folder), a module as its dotted name."""
    spec = str(spec).strip()
    return str(Path(spec).expanduser().resolve()) if _is_path(spec) else spec


def plugins_value(value) -> list[str]:
    """The ``plugins`` setting: a list (or one comma-separated string) of files and modules."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [canonical(item) for item in items if str(item).strip()]


S.declare(
    S.Setting(
        "plugins",
        [],
        "Python files or modules to import first: they register poolings, loss terms or datasets "
        "(kept in config.yaml and passed to every process the run starts)",
        "run",
        type=plugins_value,
        flag="list",
        affects_result=False,
    )
)


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise PluginError(f"--plugins: plugin file {str(path)!r} does not exist")
    name = f"swwae_plugin_{path.stem}_{zlib.crc32(str(path).encode()):08x}"  # the same in every process
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load(specs: Iterable[str]) -> list[str]:
    """Import each file or module once (in this process); returns their canonical names."""
    names = []
    for spec in specs:
        name = canonical(spec)
        if name not in _loaded:
            if _is_path(name):
                _loaded[name] = _import_file(Path(name))
            else:
                try:
                    _loaded[name] = importlib.import_module(name)
                except ModuleNotFoundError as error:
                    if error.name and name.startswith(error.name):
                        raise PluginError(
                            f"--plugins: no module named {name!r} (give a .py file or an importable module)"
                        ) from None
                    raise
        names.append(name)
    return names


def named_in_config(path: Path) -> list[str]:
    """The ``plugins`` key of a config file; anything else wrong with the file is reported when it is read."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return []
    value = data.get("plugins") if isinstance(data, dict) else None
    return plugins_value(value) if value else []


def from_environment() -> list[str]:
    return [s for s in os.environ.get(ENVIRONMENT, "").split(os.pathsep) if s]


def load_installed() -> None:
    """Import every installed package's entry point in ``orchestration.plugins`` (once per process)."""
    global _installed_loaded
    if _installed_loaded:
        return
    _installed_loaded = True
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()
        _installed_modules.add(entry_point.module)


def require_chosen(named, source: str) -> list[str]:
    """The plugins ``source`` (a file from elsewhere) names, each of which must already be chosen: given with
    ``--plugins`` (or by another trusted source) and so imported, or installed. Raises PluginError otherwise,
    before anything is imported or written; returns their canonical names."""
    names = plugins_value(named) if named else []
    load_installed()
    unchosen = [name for name in names if name not in _loaded and name not in _installed_modules]
    if unchosen:
        raise PluginError(
            f"{source} names plugin(s) {', '.join(unchosen)}, which would run their code: "
            f"if you trust them, allow them with --plugins {' '.join(unchosen)}"
        )
    return names


def loaded() -> list[str]:
    """The plugins named so far in this process, in the order they were imported."""
    return list(_loaded)


__all__ = [
    "ENTRY_POINT_GROUP",
    "ENVIRONMENT",
    "PluginError",
    "canonical",
    "plugins_value",
    "load",
    "named_in_config",
    "from_environment",
    "load_installed",
    "loaded",
    "require_chosen",
]


def declare_all_settings() -> None:
    """Import the modules that declare the built-in settings (their import declares them), then the
    installed plugins and those this process was handed by the one that started it."""
    import datamodules.semi_supervised  # noqa: F401
    from swwae_lightning import module, objectives, pooling  # noqa: F401

    from . import predict, tracking, trainer, training  # noqa: F401

    load_installed()
    load(from_environment())
