"""Lists of (image, sentence[, id]) pairs for ``rsrefseg-predict --pairs``: CSV, JSONL or our unified JSONL.

Three formats, told apart by the file name (``.csv`` / ``.tsv``; ``.jsonl`` / ``.ndjson`` / ``.json``)
and, for JSON Lines, by each line's fields:

- CSV with a header row naming the columns ``image``, ``sentence`` and optionally ``id`` (any
  order, any case; other columns are ignored). Comma, semicolon or tab separated (the separator is
  read from the header row). A UTF-8 byte-order mark (Excel's "CSV UTF-8") and Windows line
  endings are accepted; quote a field that holds the separator.
- JSON Lines, one object per line: ``{"image": "scenes/a.png", "sentence": "the red car", "id": "a1"}``.
- The unified JSONL of ``rsrefseg-prepare`` (fields ``file_name``, ``sent``, ``image_id``,
  optionally ``sample_id``): every line is predicted, whatever its ``split``; the id is
  ``sample_id`` when the line has one.

Relative image paths are taken from ``image_root`` when given, otherwise from the pairs file's
folder (plain pairs) or from its ``images/`` sub-folder (the unified layout, as ``data=jsonl``
reads it). A path with backslashes (a list written on Windows) that does not exist as written is
read with slashes. Blank lines are skipped. A pair without an id is called ``<image stem>-<line>``.

A structural problem (no such column, a line that is not JSON, a field of the wrong type, two pairs
with one id) stops here with the file, line and field named. An empty sentence or image cell does
not: that pair fails on its own later, in the summary, while the others are predicted.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsrefseg.data.json_lines import read_json_lines

CSV_SUFFIXES = (".csv", ".tsv")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_DELIMITERS = ",;\t"

#: characters kept in an output file name made from an id; every other run becomes "_"
_UNSAFE = re.compile(r"[^\w.\-]+")


@dataclass(frozen=True)
class Pair:
    """One thing to predict.

    Attributes:
        id: The pair's name in the summary (the user's id, or ``<image stem>-<line>``).
        image: The image path, resolved; None for an empty cell (may not exist: that pair then
            fails on its own).
        sentence: The referring expression as written (may be empty: that pair then fails).
        source: Where it came from, ``file:line`` (or ``command line``).
    """

    id: str
    image: Path | None
    sentence: str
    source: str

    @property
    def stem(self) -> str:
        """The id made safe as the start of a file name."""
        return file_stem(self.id)


def file_stem(name: str) -> str:
    """An id as a file name stem: path separators and other unsafe characters become ``_``."""
    stem = _UNSAFE.sub("_", name).strip("._") or "item"
    return stem


def read_pairs(path: str | Path, *, image_root: str | Path | None = None) -> list[Pair]:
    """Every pair of a CSV / JSONL / unified JSONL file, in file order.

    Args:
        path: The pairs file.
        image_root: The folder relative image paths are taken from (default: see the module doc).

    Raises:
        FileNotFoundError: the pairs file (or ``image_root``) does not exist.
        ValueError: an unknown file type, or a malformed file, naming the file, line and field.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    root = None
    if image_root is not None:
        root = Path(image_root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image root not found (--image-root): {root}")
    suffix = path.suffix.lower()
    try:
        # utf-8-sig: spreadsheet programs start "CSV UTF-8" and text files with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from error
    if suffix in CSV_SUFFIXES:
        pairs = _read_csv(text, path, root)
    elif suffix in JSONL_SUFFIXES:
        pairs = _read_jsonl(path, root)
    else:
        raise ValueError(
            f"{path}: unknown pairs file type {suffix or '(no suffix)'!r}; expected a CSV "
            f"({', '.join(CSV_SUFFIXES)}) or JSON Lines ({', '.join(JSONL_SUFFIXES)}) file"
        )
    if not pairs:
        raise ValueError(f"{path} holds no pairs; expected at least one (image, sentence) row")
    check_unique_ids(pairs)
    return pairs


def check_unique_ids(pairs: list[Pair]) -> None:
    """Refuse two pairs whose outputs would have the same file name.

    Raises:
        ValueError: naming both pairs.
    """
    seen: dict[str, Pair] = {}
    for pair in pairs:
        first = seen.setdefault(pair.stem, pair)
        if first is not pair:
            raise ValueError(
                f"{pair.source}: id {pair.id!r} gives the same output names as {first.source} "
                f"(id {first.id!r}); give every pair its own id"
            )


def _read_csv(text: str, path: Path, root: Path | None) -> list[Pair]:
    header_line = text.split("\n", 1)[0]
    counts = {d: header_line.count(d) for d in CSV_DELIMITERS}
    delimiter = max(counts, key=counts.__getitem__) if any(counts.values()) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        header = []
    columns = {name.strip().lower(): index for index, name in enumerate(header)}
    missing = [name for name in ("image", "sentence") if name not in columns]
    if missing:
        raise ValueError(
            f"{path}:1: the header row has no column {' or '.join(repr(m) for m in missing)}; "
            f"columns found: {[h.strip() for h in header]}. Start the file with a header row such as "
            "'image,sentence,id'"
        )
    base = root or path.parent
    pairs = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise ValueError(
                f"{path}:{line}: {len(row)} fields but the header has {len(header)}; quote a field "
                'that holds the separator, e.g. "the car, left of the tree"'
            )
        image, sentence, identifier = (_cell(row, columns.get(name)) for name in ("image", "sentence", "id"))
        pairs.append(_pair(image, sentence, identifier.strip(), base, f"{path}:{line}"))
    return pairs


def _read_jsonl(path: Path, root: Path | None) -> list[Pair]:
    pairs = []
    for where, entry in read_json_lines(path):
        if "image" in entry or "sentence" in entry:
            fields = ("image", "sentence")
            base = root or path.parent
            default_id = None
        elif "file_name" in entry or "sent" in entry:
            fields = ("file_name", "sent")
            base = root or path.parent / "images"
            default_id = entry.get("sample_id")
        else:
            raise ValueError(
                f"{where}: no 'image' / 'sentence' fields (pairs) nor 'file_name' / 'sent' (unified "
                f"JSONL); fields present: {sorted(entry)}"
            )
        image, sentence = (_string(entry, name, where) for name in fields)
        identifier = entry.get("id", default_id)
        if identifier is not None and not isinstance(identifier, (str, int)):
            raise ValueError(f"{where}: field 'id' is a {type(identifier).__name__}; expected a string")
        pairs.append(_pair(image, sentence, "" if identifier is None else str(identifier), base, where))
    return pairs


def _cell(row: list[str], index: int | None) -> str:
    return row[index] if index is not None and index < len(row) else ""


def _string(entry: Mapping[str, Any], name: str, where: str) -> str:
    if name not in entry:
        raise ValueError(f"{where}: missing field {name!r}; fields present: {sorted(entry)}")
    value = entry[name]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: field {name!r} is a {type(value).__name__} ({value!r:.40}); expected a string"
        )
    return value


def _pair(image: str, sentence: str, identifier: str, base: Path, where: str) -> Pair:
    image = image.strip()
    resolved = None
    if image:
        resolved = base / Path(image).expanduser()
        if "\\" in image and not resolved.exists():
            # a list written on Windows (images\a.png) used here; a backslash is a file name
            # character on POSIX, so the name as written is tried first
            resolved = base / Path(image.replace("\\", "/")).expanduser()
    line = where.rpartition(":")[2]
    stem = Path(image.replace("\\", "/")).stem if image else "item"
    return Pair(id=identifier or f"{stem}-{line}", image=resolved, sentence=sentence, source=where)
