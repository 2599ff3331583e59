"""The plugin registry: hooks, defaults vs entry points, duplicates, autoload switch."""
import inspect
import re
import tomllib

import pluggy
import pytest

from benchbench import hookimpl, hookspecs
from benchbench.registry import DEFAULT_PLUGINS, KINDS, Registry, RegistryError
from conftest import ROOT

HOOKS = [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(f, hookspecs.PROJECT + "_spec")]


def test_hookspecs_are_the_documented_set():
    assert sorted(HOOKS) == ["register_datasets", "register_detectors", "register_models",
                             "register_studies", "resolve_checkpoint"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_and_tested(hook):
    f = getattr(hookspecs, hook)
    assert f.__doc__ and len(f.__doc__.strip().splitlines()) == 1, f"{hook} needs a one-line docstring"
    assert inspect.signature(f).return_annotation is not inspect.Signature.empty, f"{hook} needs a return type"
    readme = (ROOT / "README.md").read_text()
    assert f"`{hook}" in readme, f"{hook} is not documented in README.md"
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    assert re.search(rf"def test_hook_{hook}\b", tests), f"no test_hook_{hook} test"


def test_defaults_equal_the_entry_points_in_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["benchbench"] == DEFAULT_PLUGINS


def test_every_kind_has_components(registry):
    for kind in KINDS:
        assert registry.tables[kind], kind
    rows = registry.rows()
    assert {"kind", "name", "plugin", "package", "version"} <= set(rows[0])
    assert any(r["name"] == "ar-2sd" and r["package"] == "benchbench" for r in rows)


def test_misspelled_hook_fails_loudly():
    class Typo:
        @hookimpl
        def register_detector(self):  # missing the s
            return {}

    with pytest.raises(RegistryError, match="register_detector"):
        Registry(autoload=False, extra_plugins=(Typo(),))


def test_name_registered_twice_names_both_plugins():
    class Clash:
        @hookimpl
        def register_detectors(self):
            from benchbench_plugins.ar_detectors import AR1SD
            return {"ar-2sd": AR1SD}

    with pytest.raises(RegistryError, match=r"'ar-2sd' is registered twice: by plugin '.*' .* and by plugin 'ar_detectors'|'ar-2sd' is registered twice: by plugin 'ar_detectors'"):
        Registry(autoload=False, extra_plugins=(Clash(),))


def test_register_hook_must_return_a_dict():
    class Bad:
        @hookimpl
        def register_models(self):
            return ["made"]

    with pytest.raises(RegistryError, match="must return a dict"):
        Registry(autoload=False, extra_plugins=(Bad(),))


def test_hook_resolve_checkpoint(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")

    class Scheme:
        @hookimpl
        def resolve_checkpoint(self, uri):
            return ckpt if uri.startswith("zoo://") else None

    reg = Registry(autoload=False, extra_plugins=(Scheme(),))
    assert reg.resolve_checkpoint(str(ckpt)) == ckpt
    assert reg.resolve_checkpoint(f"file://{ckpt}") == ckpt
    assert reg.resolve_checkpoint("zoo://pixelcnn") == ckpt
    with pytest.raises(RegistryError, match="could resolve"):
        reg.resolve_checkpoint("nowhere://x")


def test_disable_autoload_env(monkeypatch):
    monkeypatch.setenv("BENCHBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = Registry()
    assert set(reg.pm.list_name_plugin()) >= {(n, reg.pm.get_plugin(n)) for n in DEFAULT_PLUGINS}
    assert not reg.pm.list_plugin_distinfo()


def _plugin(hook, table):
    ns = {"hookimpl": hookimpl, "table": table}
    exec(f"class P:\n    @hookimpl\n    def {hook}(self):\n        return table\n", ns)
    return ns["P"]()


def test_hook_register_datasets():
    from benchbench_plugins.synthetic import Noise

    reg = Registry(autoload=False, extra_plugins=(_plugin("register_datasets", {"my-noise": Noise}),))
    assert reg.get("datasets", "my-noise").factory is Noise
    assert reg.get("datasets", "my-noise").package == "(registered in code)"


def test_hook_register_models():
    from benchbench_plugins.made import MADE

    reg = Registry(autoload=False, extra_plugins=(_plugin("register_models", {"made-2": MADE}),))
    assert reg.get("models", "made-2").factory is MADE


def test_hook_register_detectors():
    from benchbench_plugins.ar_detectors import BitsPerDimInterval

    reg = Registry(autoload=False, extra_plugins=(_plugin("register_detectors", {"ar-3sd": BitsPerDimInterval}),))
    assert reg.get("detectors", "ar-3sd").plugin != "ar_detectors"
    with pytest.raises(RegistryError, match="did you mean 'ar-3sd'"):
        reg.get("detectors", "ar-3ds")


def test_hook_register_studies():
    from benchbench_plugins.ood_study import OODGrid

    reg = Registry(autoload=False, extra_plugins=(_plugin("register_studies", {"grid": OODGrid}),))
    assert reg.get("studies", "grid").factory is OODGrid
