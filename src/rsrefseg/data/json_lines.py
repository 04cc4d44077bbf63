"""JSON Lines as our readers take them: one object per line, each named ``file:line`` in errors."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def read_json_lines(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(where, object)`` for every non-blank line of ``path``, ``where`` being ``"<path>:<line>"``.

    Read as UTF-8 with an optional byte-order mark (Windows editors write one). Lines end at ``\\n``
    only (a ``\\r`` before it is JSON whitespace): a JSON string written with ``ensure_ascii=False``
    may hold U+2028 or U+0085, where ``str.splitlines`` would cut the line.

    Raises:
        ValueError: a line is not valid JSON, or not a JSON object, naming ``<path>:<line>``.
    """
    text = path.read_text(encoding="utf-8-sig")
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from error
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: a {type(entry).__name__}; expected a JSON object")
        yield where, entry
