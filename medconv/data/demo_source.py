"""What a datamodule trains on when it has no manifest: a demo source, injected as one `demo` argument.

The data layer knows only these protocols. The synthetic generators (`medconv.demo`) are named by class path, in
configs (`demo: {class_path: medconv.demo.MammoDemo, init_args: {...}}`) or as a datamodule's default, and are
never imported here, so the generators stay a leaf and a run on a real manifest never loads them.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from medconv.errors import ConfigError


@runtime_checkable
class DemoSource(Protocol):
    """Makes its data once (reused afterwards) and returns the manifest a datamodule reads."""

    def manifest(self) -> Path: ...


@runtime_checkable
class TiledDemoSource(Protocol):
    """Demo slides tiled at the datamodule's geometry; the manifest's rows carry their coords stores."""

    def manifest(self, tile_size: int, target_mpp: float) -> Path: ...


def make_demo(class_path: str, **init_args: Any) -> Any:
    """An instance of the demo class named by `class_path`, imported only now (a datamodule's default)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(**init_args)


def with_deprecated_keys(demo: Any, given: dict[str, Any], renames: dict[str, str], default: str, owner: str) -> Any:
    """`demo` with the deprecated init args that were given (not None) applied to it, under their new names; a
    FutureWarning names each new key. Without a `demo`, the keys build the `default` class, as before."""
    given = {key: value for key, value in given.items() if value is not None}
    if not given:
        return demo
    moved = ", ".join(f"{key} -> demo.init_args.{renames[key]}" for key in given)
    warnings.warn(
        f"{owner}: deprecated demo settings ({moved}); give one `demo` object instead: "
        f"demo: {{class_path: {default}, init_args: {{...}}}} (docs/migration.md)",
        FutureWarning, stacklevel=3,
    )
    changes = {renames[key]: value for key, value in given.items()}
    if demo is None:
        return make_demo(default, **changes)
    if not dataclasses.is_dataclass(demo):
        raise ConfigError(f"{owner}: {', '.join(given)} cannot be applied to demo {type(demo).__name__}; set "
                          f"{', '.join(changes)} in demo.init_args instead")
    return dataclasses.replace(demo, **changes)
