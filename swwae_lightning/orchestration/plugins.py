"""Extensions by name: files or modules imported before any setting is read.

A plugin registers poolings, loss terms or datasets when it is imported. It is named with
``--plugins`` (or a ``plugins:`` key in a config file), written to the run's config.yaml, and
passed on to every process the framework starts (DDP ranks, report sweeps, ``--resume``), so
its settings are known wherever the run goes. Installed packages register through the
entry-point group ``swwae_lightning.plugins`` and are found without any flag.
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

from .. import settings as S

ENTRY_POINT_GROUP = "swwae_lightning.plugins"
ENVIRONMENT = "SWWAE_PLUGINS"  # os.pathsep-separated, for processes started without our command line

_loaded: dict[str, ModuleType] = {}
_installed_loaded = False


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


def from_environment() -> list[str]:
    return [s for s in os.environ.get(ENVIRONMENT, "").split(os.pathsep) if s]


def load_installed() -> None:
    """Import every installed package's entry point in ``swwae_lightning.orchestration.plugins`` (once per process)."""
    global _installed_loaded
    if _installed_loaded:
        return
    _installed_loaded = True
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()


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
    "from_environment",
    "load_installed",
    "loaded",
]


def declare_all_settings() -> None:
    """Import the modules that declare the built-in settings (their import declares them), then the
    installed plugins and those this process was handed by the one that started it."""
    import datamodules.semi_supervised  # noqa: F401

    from .. import module, objectives, pooling  # noqa: F401
    from . import predict, tracking, trainer, training  # noqa: F401

    load_installed()
    load(from_environment())
