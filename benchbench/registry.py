"""The plugin manager: built-in and third-party plugins, and the name -> factory tables.

Built-in plugins are the modules listed under the ``benchbench`` entry-point group
in ``pyproject.toml``. They are loaded through that group exactly like
third-party plugins; :data:`DEFAULT_PLUGINS` repeats the list so that a source
checkout that was never installed still works (a test keeps the two equal).
``BENCHBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` loads the defaults only.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pluggy

from benchbench import hookspecs

ENTRY_POINT_GROUP = "benchbench"
KINDS = ("datasets", "models", "detectors", "studies")
SINGULAR = {"datasets": "dataset", "models": "model", "detectors": "detector", "studies": "study"}

#: name -> module of every built-in plugin (the same as pyproject's entry points).
DEFAULT_PLUGINS = {
    "synthetic": "benchbench_plugins.synthetic",
    "digits": "benchbench_plugins.digits",
    "photo_patches": "benchbench_plugins.photo_patches",
    "image_datasets": "benchbench_plugins.image_datasets",
    "samples": "benchbench_plugins.samples",
    "made": "benchbench_plugins.made",
    "pixelcnnpp": "benchbench_plugins.pixelcnnpp",
    "ar_detectors": "benchbench_plugins.ar_detectors",
    "ood_study": "benchbench_plugins.ood_study",
    "wgan_gp": "benchbench_plugins.wgan_gp",
    "gan_samples": "benchbench_plugins.gan_samples",
    "study_toy2d": "benchbench_plugins.study_toy2d",
    "study_pixel_opt": "benchbench_plugins.study_pixel_opt",
    "study_gan_bpd": "benchbench_plugins.study_gan_bpd",
    "classifiers": "benchbench_plugins.classifiers",
    "compressors": "benchbench_plugins.compressors",
    "ood_detectors": "benchbench_plugins.ood_detectors",
    "study_arcycle": "benchbench_plugins.study_arcycle",
}


class RegistryError(RuntimeError):
    """A plugin problem: a name registered twice, an unknown name, a bad hook."""


@dataclass(frozen=True)
class Component:
    """One registered factory and who supplied it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    package: str
    version: str

    @property
    def component_version(self) -> str:
        """The factory's own ``version`` attribute if it has one, else its package's version."""
        return str(getattr(self.factory, "version", self.version))


class _CoreHooks:
    """benchbench's own hook implementations: local checkpoint paths."""

    @hookspecs.hookimpl(trylast=True)
    def resolve_checkpoint(self, uri: str) -> Path | None:
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()
        return path if path.is_file() else None


def suggest(name: str, options) -> str:
    """' (did you mean 'x'?)' for a near-miss name, or ''."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name, defined) -> str:
    """"unknown <kind> 'name' (did you mean ...?); the suite defines: a, b" for a name missing from ``defined``."""
    return f"unknown {kind} {name!r}{suggest(str(name), defined)}; the suite defines: {', '.join(defined) or '(none)'}"


class Registry:
    """Loads plugins and holds the name -> :class:`Component` tables for each kind."""

    def __init__(self, autoload: bool | None = None, extra_plugins: tuple = ()) -> None:
        if autoload is None:
            autoload = os.environ.get("BENCHBENCH_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes")
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(_CoreHooks(), name="benchbench.core")
        self._package_of: dict[str, tuple[str, str]] = {}
        import benchbench

        for name, module in DEFAULT_PLUGINS.items():
            self.pm.register(importlib.import_module(module), name=name)
            self._package_of[name] = ("benchbench", benchbench.__version__)
        self._package_of["benchbench.core"] = ("benchbench", benchbench.__version__)
        if autoload:
            self._load_entry_points()
        for plugin in extra_plugins:
            self.pm.register(plugin)
            self._package_of[self.pm.get_name(plugin)] = ("(registered in code)", "")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            raise RegistryError(f"plugin {e.plugin!r} implements a hook benchbench does not define: {e}") from e
        self.tables = {kind: self._collect(kind) for kind in KINDS}

    def _load_entry_points(self) -> None:
        for dist in md.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP or self.pm.get_plugin(ep.name) is not None:
                    continue
                try:
                    plugin = ep.load()
                except Exception as e:  # a broken plugin must say who it is
                    raise RegistryError(
                        f"could not load plugin {ep.name!r} ({ep.value}) from package "
                        f"{dist.metadata['Name']} {dist.version}: {type(e).__name__}: {e}"
                    ) from e
                self.pm.register(plugin, name=ep.name)
                self._package_of[ep.name] = (dist.metadata["Name"], dist.version)

    def _collect(self, kind: str) -> dict[str, Component]:
        hook = getattr(self.pm.hook, f"register_{kind}")
        table: dict[str, Component] = {}
        for impl in hook.get_hookimpls():  # call each separately: we need to know who supplied what
            result = impl.function()
            if result is None:
                continue
            if not isinstance(result, dict):
                raise RegistryError(f"plugin {impl.plugin_name!r}: register_{kind}() must return a dict, got {type(result).__name__}")
            package, version = self._package_of.get(impl.plugin_name, ("unknown", ""))
            for name, factory in result.items():
                if name in table:
                    raise RegistryError(
                        f"{SINGULAR[kind]} {name!r} is registered twice: by plugin {table[name].plugin!r} "
                        f"({table[name].package}) and by plugin {impl.plugin_name!r} ({package})"
                    )
                if not callable(factory):
                    raise RegistryError(f"plugin {impl.plugin_name!r}: {SINGULAR[kind]} {name!r} is not callable")
                table[name] = Component(kind, name, factory, impl.plugin_name, package, version)
        return dict(sorted(table.items()))

    def get(self, kind: str, name: str) -> Component:
        table = self.tables[kind]
        if name not in table:
            raise RegistryError(f"unknown {SINGULAR[kind]} {name!r}{suggest(name, table)}; registered: {', '.join(table)}")
        return table[name]

    def resolve_checkpoint(self, uri: str) -> Path:
        path = self.pm.hook.resolve_checkpoint(uri=uri)
        if path is None:
            raise RegistryError(f"no plugin could resolve checkpoint {uri!r} (not a local file?)")
        return Path(path)

    def rows(self) -> list[dict[str, str]]:
        """Every component with the package and version that supplied it (for ``benchbench plugins``)."""
        return [
            {"kind": SINGULAR[c.kind], "name": c.name, "plugin": c.plugin, "package": c.package, "version": c.version}
            for kind in KINDS
            for c in self.tables[kind].values()
        ]


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built on first use)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default
