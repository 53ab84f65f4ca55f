"""The bad-input table: each malformed input, for every recipe, ends in exit code 2 and one message naming the file,
row or key at fault, with nothing written.

The cases are in tests/bad_input_cases.py. They are the table in docs/reliability.md, message for message; after
changing a message or a case, rewrite it:

    python tests/test_bad_input_table.py --write
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import pytest
from bad_input_cases import CASES, IDS, RECIPES, Case

from tunekit.errors import USER_ERROR_EXIT_CODE, exit_on_user_error

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
BEGIN = "<!-- bad-input table: written by python tests/test_bad_input_table.py --write -->"
END = "<!-- end of the bad-input table -->"


def run_case(case: Case, folder: Path) -> tuple[int | None, str]:
    """Run ``case`` in ``folder`` (set up already): its exit code (None for a traceback) and what it printed last,
    with the folder's path written as ``<tmp>``."""
    module, _, _, base = RECIPES[case.recipe]
    argv = [f"output_dir={folder}/run", *base, *(a.replace("{tmp}", str(folder)) for a in case.args)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            exit_on_user_error(lambda: module.main(argv))
            code: int | None = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except Exception as bug:  # a traceback: shown in the table as the bug it is
            code, err = None, io.StringIO(f"{type(bug).__name__}: {bug}")
    lines = err.getvalue().strip().splitlines() or [""]
    return code, lines[-1].replace(str(folder), "<tmp>")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, case):
    if case.setup is not None:
        case.setup(tmp_path)
    before = _snapshot(tmp_path / "run")
    code, message = run_case(case, tmp_path)
    assert code == USER_ERROR_EXIT_CODE, message
    assert message.startswith("tunekit error: ")
    assert case.names.format(col=RECIPES[case.recipe][2], tmp="<tmp>") in message
    if case.writes_nothing:
        assert not (tmp_path / "run").exists()
    else:
        assert _snapshot(tmp_path / "run") == before  # what was there is untouched
    assert DOCUMENTED.get((case.recipe, case.what)) == message[len("tunekit error: ") :], (
        "docs/reliability.md shows another message for this case; rewrite its table with: "
        "python tests/test_bad_input_table.py --write"
    )


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_byte_order_mark_is_accepted(tmp_path):
    """Files saved on Windows or exported from spreadsheets begin with one; jsonl and csv alike."""
    from tunekit.data.sources import read_rows

    (tmp_path / "d.jsonl").write_text("\ufeff" + json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    (tmp_path / "d.csv").write_text("\ufeffprompt,completion\na,b\n")
    for name in ("d.jsonl", "d.csv"):
        assert read_rows(str(tmp_path / name)).rows == [{"prompt": "a", "completion": "b"}]


def test_the_table_covers_every_recipe_with_at_least_80_inputs():
    assert len(CASES) >= 80 and {c.recipe for c in CASES} == set(RECIPES)
    assert len(set(IDS)) == len(IDS)


def documented() -> dict[tuple[str, str], str]:
    """(recipe, input) -> message, as the table in docs/reliability.md shows them."""
    text = DOC.read_text()
    if BEGIN not in text:
        return {}
    table = text[text.index(BEGIN) : text.index(END)].splitlines()[3:]
    rows = {}
    for line in table:
        cells = [c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4:
            recipe, what, _, message = cells
            rows[(recipe, what)] = message.removeprefix("`` ").removesuffix(" ``")
    return rows


DOCUMENTED = documented()


def render(results: list[tuple[Case, int | None, str]]) -> str:
    lines = [BEGIN, "", "| recipe | input | exit | message |", "|---|---|---|---|"]
    for case, code, message in results:
        shown = message.removeprefix("tunekit error: ").replace("|", "\\|")
        # A double-backtick code span: messages may hold backticks of their own.
        lines.append(f"| {case.recipe} | {case.what} | {'traceback' if code is None else code} | `` {shown} `` |")
    return "\n".join([*lines, "", END])


def write_doc() -> None:
    results = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            if case.setup is not None:
                case.setup(Path(folder))
            results.append((case, *run_case(case, Path(folder))))
    text = DOC.read_text()
    start = text.index(BEGIN) if BEGIN in text else len(text)
    end = text.index(END) + len(END) if END in text else len(text)
    DOC.write_text(text[:start] + render(results) + text[end:] + ("\n" if end == len(text) else ""))
    clean = sum(code == USER_ERROR_EXIT_CODE for _, code, _ in results)
    print(f"{len(results)} inputs, {clean} clean (exit 2); table written to {DOC}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    write_doc()
