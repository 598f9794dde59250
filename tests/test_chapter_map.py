"""The chapter map has one source (rlhf_edu/data/chapter_map.json): README's table and notebook
01's copy must both be its rendering, so that an edit to one place cannot drift from the other."""

import json
from pathlib import Path

import pytest

from rlhf_edu.chapter_map import chapter_map, chapter_map_markdown

ROOT = Path(__file__).resolve().parent.parent
HEADER = "| chapter item | kind | notebook | exercise | code |"


def table_at(lines: list[str], start: int) -> str:
    """The markdown table that starts at ``lines[start]``: the run of lines starting with |."""
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end])


def test_rendering_has_every_row():
    data = chapter_map()
    lines = chapter_map_markdown().splitlines()
    assert lines[0] == HEADER
    assert len(lines) == 2 + len(data["rows"])
    assert all(set(row) == set(data["columns"]) for row in data["rows"])


def test_readme_table_is_the_rendering():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines.count(HEADER) == 1, "README should hold the chapter map once"
    table = table_at(lines, lines.index(HEADER))
    assert table == chapter_map_markdown(), (
        "README's chapter map differs from rlhf_edu/data/chapter_map.json: edit the JSON and "
        "paste `python -c 'from rlhf_edu.chapter_map import chapter_map_markdown as m; "
        "print(m())'` into README")


def test_notebook_01_shows_the_rendering():
    nb = json.loads((ROOT / "notebooks" / "01_four_models.ipynb").read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"
             and "chapter_map_markdown()" in "".join(c["source"])]
    assert len(cells) == 1, "notebook 01 should render the map in one code cell"
    shown = [o["data"]["text/markdown"] for o in cells[0]["outputs"]
             if "text/markdown" in o.get("data", {})]
    assert len(shown) == 1, "notebook 01's map cell has no saved markdown output: re-execute it"
    text = shown[0] if isinstance(shown[0], str) else "".join(shown[0])
    assert text.strip() == chapter_map_markdown(), (
        "notebook 01's saved map differs from the source: re-execute notebooks/01_four_models")
    md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert HEADER not in md and "| chapter item |" not in md, "01 should not hold a copy"


def test_a_cell_with_a_bar_is_refused():
    data = {"columns": {"a": "A"}, "rows": [{"a": "x | y"}]}
    with pytest.raises(ValueError, match="may not contain"):
        chapter_map_markdown(data)
