from typing import ClassVar

import pytest

from sparsequant import registry as registry_module
from sparsequant.errors import ConfigError, RegistryError
from sparsequant.registry import Registry
from sparsequant.stage import StageConfig


def make_stage(stage_name: str, config=StageConfig):
    class Dummy:
        name: ClassVar[str] = stage_name
        summary: ClassVar[str] = "dummy"
        Config = config
        requires: ClassVar[frozenset[str]] = frozenset()
        provides: ClassVar[frozenset[str]] = frozenset()

        def __init__(self, cfg):
            self.config = cfg

        def run(self, artifact, ctx):
            return artifact

    return Dummy


def test_builtins_listed_without_import():
    registry = Registry.default()
    assert {"import", "prune", "evaluate"} <= set(registry.names())
    assert registry.get("prune").name == "prune"


def test_register_rejects_duplicates_and_bad_classes():
    registry = Registry.default()
    registry.register(make_stage("mine"))
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(make_stage("mine"))
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(make_stage("prune"))
    with pytest.raises(RegistryError, match="Config"):
        registry.register(make_stage("bad", config=dict))


def test_unknown_stage_hint():
    with pytest.raises(ConfigError, match="did you mean 'evaluate'"):
        Registry.default().get("evalute")


def test_entry_point_clash(monkeypatch):
    class FakeEP:
        name, value, dist = "prune", "acme.prune:Other", None

    monkeypatch.setattr(registry_module.importlib.metadata, "entry_points", lambda group: [FakeEP()])
    with pytest.raises(RegistryError, match="clashes"):
        Registry.default()


def test_entry_point_added(monkeypatch):
    class FakeEP:
        name, value, dist = "wanda_plus", "acme.wanda:Stage", None

    monkeypatch.setattr(registry_module.importlib.metadata, "entry_points", lambda group: [FakeEP()])
    registry = Registry.default()
    assert "wanda_plus" in registry.names()
    with pytest.raises(RegistryError, match="cannot load stage"):
        registry.get("wanda_plus")


def test_summaries_come_from_the_stage_classes_without_importing_them():
    registry = Registry.default()
    for name in registry.names():
        assert registry.summary(name) == registry.get(name).summary  # the class is the single source
    registry.register(make_stage("mine"))
    assert registry.summary("mine") == "dummy"
