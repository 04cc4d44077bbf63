"""`rsrefseg-prepare`: check a downloaded dataset file by file and convert it to the unified JSONL.

    rsrefseg-prepare --layout rrsisd --root /data/RRSIS-D --out /data/unified/rrsisd
    rsrefseg-prepare --layout refsegrs --root /data/RefSegRS --out /data/unified/refsegrs --workers 8
    rsrefseg-prepare --layout rrsisd --root … --out … data.known_bad_list=strict   # Hydra overrides

``--layout`` is a ``conf/data`` option: its ``reader`` node says how the download is laid out
(folder names can be overridden like any config value), ``known_bad`` / ``known_bad_list`` which
files to skip, ``expected_counts`` the published split sizes. The same config then trains on the
raw layout (``data=<layout>``) or on the written JSONL (``data=jsonl data.root=<out>``).

Checks: samples per split against the expected counts; missing or unreadable images and mask
files; undecodable segmentations; empty sentences; mask / image and index / image size mismatches;
empty masks; mask images that are not two-valued; duplicate (image, sentence) pairs; and which
known-bad samples were skipped. Errors (a sample that cannot be trained or scored as it stands)
stop the conversion; warnings are reported and the JSONL is written (``--strict`` makes them stop
it too). Size mismatches follow ``data.size_mismatch``: warnings under ``resize_mask`` (the line
holds the mask resized to the image) and ``skip`` (the sample is left out and listed), errors
under ``error``.

Writes ``<out>/<split>.jsonl``, ``<out>/images`` (a link to the download's image folder) and
``<out>/prepare_report.json``, each atomically, and never replaces a different existing file
without ``--force`` (identical content is left as it is). A report of a failed run may always be
replaced.

argparse, not Hydra, runs the command line: it is a file converter with required paths and flags,
and it needs no run folder or logging setup; the data config is composed with Hydra's compose API.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from rsrefseg.data.conversion import OverwriteRefused, PrepareError, prepare
from rsrefseg.data.inspection import format_report
from rsrefseg.data.records import SPLITS
from rsrefseg.errors import reports_errors

# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsrefseg-prepare",
        description="Check a downloaded referring-segmentation dataset and convert it to the unified JSONL.",
    )
    parser.add_argument(
        "--layout", required=True, help="a conf/data option: refsegrs, rrsisd, risbench, jsonl"
    )
    parser.add_argument("--root", required=True, type=Path, help="the downloaded dataset folder")
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder for <split>.jsonl and the report"
    )
    # no `choices`: nargs="+" also swallows the Hydra overrides that follow, which main() hands back
    parser.add_argument(
        "--splits", nargs="+", default=list(SPLITS), metavar="{train,val,test}", help="splits to convert"
    )
    parser.add_argument("--force", action="store_true", help="replace existing outputs that differ")
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (0: none)")
    parser.add_argument("--no-link-images", action="store_true", help="do not create <out>/images")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of the data config, e.g. data.known_bad_list=strict"
    )
    return parser


@reports_errors("rsrefseg-prepare")
def main(argv: Iterable[str] | None = None) -> int:
    """Console entry point; returns 0 (written), 1 (checks failed) or 2 (cannot read / would overwrite)."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    splits, overrides = _splits_and_overrides(args.splits, args.overrides)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        parser.error(f"--splits: {unknown or 'none given'}; expected names among {list(SPLITS)}")
    try:
        report = prepare(
            layout=args.layout,
            root=args.root,
            out=args.out,
            splits=splits,
            overrides=overrides,
            force=args.force,
            strict=args.strict,
            workers=args.workers,
            link_images=not args.no_link_images,
        )
    except PrepareError as err:
        if isinstance(err, OverwriteRefused):
            print(format_report(err.report, strict=args.strict))
        print(f"rsrefseg-prepare: error: {err}", file=sys.stderr)
        return 2
    print(format_report(report, strict=args.strict))
    return 0 if report.ok(strict=args.strict) else 1


def _splits_and_overrides(splits: Sequence[str], overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Hand back the ``key=value`` overrides that ``--splits a b key=value`` swallowed, in order."""
    swallowed = [item for item in splits if "=" in item]
    return [item for item in splits if "=" not in item], [*swallowed, *overrides]


if __name__ == "__main__":
    sys.exit(main())
