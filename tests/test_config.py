from dataclasses import dataclass, field
from typing import Literal

import pytest

from tunekit.config import load_config
from tunekit.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    kind: Literal["a", "b"] = "a"
    names: list[str] = field(default_factory=lambda: ["x"])


@dataclass
class Outer:
    name: str = "run"
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_overrides_last_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-yaml\ninner:\n  lr: 1e-4\n  steps: 3\n")
    config = load_config(Outer, path, ["inner.steps=7", "limit=5", "inner.names=[q_proj,v_proj]"])
    assert config.name == "from-yaml"
    assert config.inner.lr == pytest.approx(1e-4)  # "1e-4" is a string to YAML 1.1; still read as a float
    assert config.inner.steps == 7
    assert config.limit == 5
    assert config.inner.names == ["q_proj", "v_proj"]
    assert load_config(Outer, None, ["limit=null"]).limit is None


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.stesp'; did you mean inner.steps\?"):
        load_config(Outer, None, ["inner.stesp=3"])
    with pytest.raises(ConfigError, match="did you mean name"):
        load_config(Outer, None, ["nmae=x"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inner.steps=three", "config key 'inner.steps' expects int, got 'three'"),
        ("inner.lr=true", "config key 'inner.lr' expects float"),
        ("inner.kind=c", "config key 'inner.kind' must be one of 'a', 'b'"),
        ("inner.names=5", "config key 'inner.names' expects a list"),
        ("inner=3", "inner must be a mapping"),
        ("noequals", "is not of the form key.sub=value"),
    ],
)
def test_wrong_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(Outer, None, [override])


def test_bad_yaml_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")


@dataclass
class Recipe:
    inner: Inner = field(default_factory=lambda: Inner(lr=0.5, steps=99))


def test_overriding_one_key_keeps_the_recipe_defaults_of_its_section():
    config = load_config(Recipe, None, ["inner.kind=b"])
    assert (config.inner.lr, config.inner.steps, config.inner.kind) == (0.5, 99, "b")
