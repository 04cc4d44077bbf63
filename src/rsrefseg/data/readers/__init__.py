"""One reader per dataset layout; each returns a split's `ReferringRecord`s in index order.

A reader is a plain function ``read_<layout>(*, root, split, …, skip_files=()) -> list[ReferringRecord]``
configured by ``conf/data/<layout>.yaml`` (its ``reader`` node). A new layout is one file here,
one config file and one fixture generator in ``tests/fixtures_layouts.py``.
"""

from rsrefseg.data.readers.jsonl import read_jsonl
from rsrefseg.data.readers.refsegrs import read_refsegrs
from rsrefseg.data.readers.risbench import read_risbench
from rsrefseg.data.readers.rrsisd import read_rrsisd

__all__ = ["read_jsonl", "read_refsegrs", "read_risbench", "read_rrsisd"]
