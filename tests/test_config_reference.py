"""docs/configuration-reference.md is generated from the config classes; it must match them and leave no key bare."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import yaml

from tunekit.config import all_keys
from tunekit.config_reference import field_comments, recipes, render, rows, type_name, yaml_value

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration-reference.md"
REGENERATE = "python -m tunekit.config_reference > docs/configuration-reference.md"


def test_committed_page_matches_the_config_classes():
    assert PAGE.read_text() == render(), f"docs/configuration-reference.md is stale; regenerate it with: {REGENERATE}"


def test_every_key_of_every_recipe_has_a_meaning():
    bare = [
        f"{recipe}: {key}"
        for recipe, (cls, _, _) in recipes().items()
        for key, _, _, meaning in rows(cls())
        if not meaning.strip()
    ]
    assert not bare, "keys without a comment above their field in the source: " + ", ".join(bare)


def test_the_reference_lists_exactly_the_keys_the_config_loader_accepts():
    for recipe, (cls, _, _) in recipes().items():
        listed = [key for key, *_ in rows(cls()) if "[]." not in key]
        assert listed == all_keys(cls), recipe


@dataclasses.dataclass
class _Item:
    name: str = ""  # the item's name
    weight: float = 1.0


@dataclasses.dataclass
class _Base:
    # Base comment,
    # on two lines.
    size: int = 2

    # A blank line above the field cuts this comment off from it.

    plain: bool = False


@dataclasses.dataclass
class _Child(_Base):
    """Docstring line that looks like a field:
    size: this is not a comment.
    """

    size: int = 3
    # Child's own.
    plain: bool = True
    mode: Literal["a", "b"] | None = None
    items: list[_Item] = dataclasses.field(default_factory=lambda: [_Item("x", 2.0)])

    def method(self) -> None:
        # A comment inside a method is not a field's.
        mode: int = 1
        del mode


def test_comments_come_from_above_the_field_or_its_line_and_subclasses_keep_inherited_ones():
    assert field_comments(_Child) == {
        "size": "Base comment, on two lines.",
        "plain": "Child's own.",
    }
    assert field_comments(_Item) == {"name": "the item's name"}


def test_rows_render_types_and_defaults_as_a_yaml_user_writes_them():
    table = {key: (kind, default) for key, kind, default, _ in rows(_Child())}
    assert table["mode"] == ("'a' | 'b' | null", "null")
    assert table["plain"] == ("bool", "true")
    assert table["items"] == ("list[_Item]", "[{name: x, weight: 2.0}]")
    # Each field of a list's items gets a row, with the default an item that leaves it out gets.
    assert table["items[].weight"] == ("float", "1.0")
    assert table["items[].name"] == ("str", '""')


def test_yaml_values_read_back_as_the_default_they_show():
    for value in [None, True, 0.001, 3, "tiny-llama", "{prompt}", "\n\nAssistant:", "no", "", ["q_proj", "v_proj"]]:
        assert yaml.safe_load(yaml_value(value)) == value, value
    assert type_name(list[str]) == "list[str]"
