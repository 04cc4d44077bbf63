"""`rsrefseg-export`: a training checkpoint → one self-contained file with LoRA merged into the weights.

    rsrefseg-export logs/train/runs/<run>/checkpoints/best-step1000.ckpt model_merged.ckpt

The export holds every weight of the network (adapters folded into their base weights, so
inference runs at the base model's cost) and a config that builds the same network without
adapters or pretrained files. ``rsrefseg-eval ckpt_path=model_merged.ckpt`` scores it.
"""

from __future__ import annotations

import argparse
import logging

from rsrefseg.errors import reports_errors
from rsrefseg.process import prepare_process
from rsrefseg.training.checkpoint_files import export_merged


@reports_errors("rsrefseg-export")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a checkpoint written by rsrefseg-train")
    parser.add_argument("output", help="the merged file to write")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_process()
    path = export_merged(args.checkpoint, args.output, force=args.force)
    print(f"exported {path}")


if __name__ == "__main__":
    main()
