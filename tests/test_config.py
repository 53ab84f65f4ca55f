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


@dataclass
class Texts:
    revision: str | None = None
    template: str = "{prompt}"
    tasks: str | list[str] = "all"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("revision=1.10", "1.10"),  # YAML would read 1.1
        ("revision=0755", "0755"),  # YAML 1.1 would read an octal 493
        ("revision=2024", "2024"),
        ("template=Q: {prompt} #### A:", "Q: {prompt} #### A:"),  # YAML would drop a comment from "#"
        ("template='  {prompt}: '", "  {prompt}: "),  # quoted: YAML's reading, spaces and all
        ("revision=null", None),
        ("revision=a: {b}", "a: {b}"),  # text or null: text, though YAML reads a mapping
        ("tasks=[a, b]", ["a", "b"]),  # text or a list: a list
        ("tasks=a", "a"),
    ],
)
def test_a_text_key_takes_the_override_as_written(override, expected):
    key = override.split("=")[0]
    assert getattr(load_config(Texts, None, [override]), key) == expected


def test_a_number_where_a_yaml_file_wants_text_must_be_quoted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("revision: 1.10\n")
    with pytest.raises(ConfigError, match=r"'revision' holds text, but YAML read 1.1 as a number.*quote it"):
        load_config(Texts, path)
    path.write_text('revision: "1.10"\ntemplate: 7\n')
    assert (load_config(Texts, path).revision, load_config(Texts, path).template) == ("1.10", "7")


def test_a_section_given_as_null_keeps_the_recipe_defaults():
    assert load_config(Recipe, None, ["inner=null"]).inner == Recipe().inner


def test_nan_is_refused():
    with pytest.raises(ConfigError, match="config key 'inner.lr' expects float, got 'nan'"):
        load_config(Outer, None, ["inner.lr=nan"])
