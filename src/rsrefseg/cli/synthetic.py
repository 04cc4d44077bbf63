"""`rsrefseg-synthetic`: write the synthetic benchmark to disk as the unified JSONL + PNG layout.

    rsrefseg-synthetic --out /data/unified/synthetic --train 20000 --val 500 --test 1000
    rsrefseg-synthetic --out /tmp/synthetic-s1 --test 1000 --seed 1
    rsrefseg-synthetic --out /tmp/synthetic-128 --val 500 data.image_size=128   # Hydra overrides

The generator is the ``data.generator`` node of ``conf/data/synthetic.yaml``, composed as
``rsrefseg-train`` composes it, so with the same seed the export holds exactly the samples the
default run reads: sample i of a split on disk is sample i of that split on the fly (same image,
sentence, mask and sample id). ``rsrefseg-train data=jsonl data.root=<out>`` reads it back.

Writes ``<out>/images/synthetic-<split>-<index:06d>.png``, ``<out>/<split>.jsonl`` (after all of
that split's images, so a JSONL never names a missing image) and ``<out>/synthetic_export.json``
(per split: its size and the generator settings that made it), each file atomically. It refuses
(exit code 2, nothing written) when a file it would write exists, unless ``--force``, and never
writes into an ``<out>/images`` that is a link (``rsrefseg-prepare``'s outputs link to a dataset).

argparse, not Hydra, runs the command line, as for the other converters (``rsrefseg-prepare``,
``rsrefseg-export``): it needs no run folder or logging set-up; the data config is composed with
Hydra's compose API.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from rsrefseg.data.synthetic import SPLITS
from rsrefseg.data.synthetic_export import IMAGE_DIR, MANIFEST_NAME, ExportError, export
from rsrefseg.errors import reports_errors


def positive_int(text: str) -> int:
    """argparse type: a sample count of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsrefseg-synthetic",
        description="Write the synthetic benchmark as the unified JSONL + PNG layout.",
        epilog="Read it back with: rsrefseg-train data=jsonl data.root=<out>",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    for split in SPLITS:
        parser.add_argument(
            f"--{split}",
            type=positive_int,
            metavar="N",
            help=f"write the {split} split with N samples (indices 0 … N-1)",
        )
    parser.add_argument("--seed", type=int, default=None, help="generator seed (default: the config's, 0)")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of the data config, e.g. data.image_size=128"
    )
    return parser


@reports_errors("rsrefseg-synthetic")
def main(argv: Iterable[str] | None = None) -> int:
    """Console entry point; returns 0 (written) or 2 (bad arguments, or outputs that would be replaced)."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    sizes = {split: getattr(args, split) for split in SPLITS if getattr(args, split) is not None}
    if not sizes:
        parser.error("name at least one split to write: --train N, --val N and / or --test N")
    try:
        written = export(
            out=args.out, sizes=sizes, seed=args.seed, overrides=args.overrides, force=args.force
        )
    except ExportError as err:
        print(f"rsrefseg-synthetic: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out).expanduser().resolve()
    for split, path in written.items():
        print(f"wrote {path} ({sizes[split]} samples)")
    print(f"wrote {sum(sizes.values())} images to {out / IMAGE_DIR}")
    print(f"wrote {out / MANIFEST_NAME}")
    print(f"read it back with: rsrefseg-train data=jsonl data.root={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
