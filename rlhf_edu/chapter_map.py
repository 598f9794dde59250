"""The chapter, mapped: which notebook, graded exercise and code cover each item of the chapter.

One source, ``rlhf_edu/data/chapter_map.json``; README's table and notebook 01's copy are both
:func:`chapter_map_markdown`'s rendering of it (``tests/test_chapter_map.py`` checks that).
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["chapter_map", "chapter_map_markdown"]


def chapter_map() -> dict:
    """The map as stored: ``{"columns": {key: header}, "rows": [{key: cell}, ...]}``."""
    return json.loads((resources.files("rlhf_edu") / "data" / "chapter_map.json").read_text(
        encoding="utf-8"))


def chapter_map_markdown(data: dict | None = None) -> str:
    """The map as one markdown table (header, separator, one line per row; no trailing
    newline). A cell may not contain `` | `` (it would split the cell)."""
    data = chapter_map() if data is None else data
    keys = list(data["columns"])
    lines = ["| " + " | ".join(data["columns"][k] for k in keys) + " |",
             "|" + "---|" * len(keys)]
    for row in data["rows"]:
        cells = [row[k] for k in keys]
        bad = [c for c in cells if " | " in c]
        if bad:
            raise ValueError(f"a chapter-map cell may not contain ' | ': {bad[0]!r}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
