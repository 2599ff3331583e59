"""Hook specifications: what a benchbench plugin may implement. Nothing else lives here."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pluggy

PROJECT = "benchbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_datasets() -> dict[str, Callable]:
    """Return {name: factory} for dataset plugins (factories build :class:`benchbench.Dataset`)."""


@hookspec
def register_models() -> dict[str, Callable]:
    """Return {name: factory} for model plugins (factories build :class:`benchbench.Model`)."""


@hookspec
def register_detectors() -> dict[str, Callable]:
    """Return {name: factory} for detector plugins (factories build :class:`benchbench.Detector`)."""


@hookspec
def register_studies() -> dict[str, Callable]:
    """Return {name: factory} for study plugins (factories build :class:`benchbench.Study`)."""


@hookspec(firstresult=True)
def resolve_checkpoint(uri: str) -> Path | None:
    """Return a local file for a checkpoint URI, or None to let another plugin try."""
