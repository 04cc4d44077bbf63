"""`rsrefseg-export`: a training checkpoint → one self-contained file with LoRA merged into the weights.

    rsrefseg-export logs/train/runs/<run>/checkpoints/best-step1000.ckpt model_merged.ckpt

The export holds every weight of the network (adapters folded into their base weights, so
inference runs at the base model's cost) and a config that builds the same network without
adapters or pretrained files. ``rsrefseg-eval ckpt_path=model_merged.ckpt`` scores it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from rsrefseg.build import prepare_process
from rsrefseg.checkpointing import FULL, merge_lora, merged_run_config
from rsrefseg.eval import load_module
from rsrefseg.io import atomic_open

log = logging.getLogger(__name__)


def export_merged(ckpt_path: str | Path, out_path: str | Path, *, force: bool = False) -> Path:
    """Write ``out_path``: the checkpoint's network with LoRA merged, every weight, and its config.

    Raises:
        FileExistsError: ``out_path`` exists and ``force`` is False.
    """
    out = Path(out_path).expanduser()
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    source = Path(ckpt_path).expanduser()
    module = load_module(source)
    merged = merge_lora(module.net)
    payload = {
        "state_dict": module.state_dict(),
        "rsrefseg_config": merged_run_config(module.run_config),
        "rsrefseg_weights": FULL,
        "rsrefseg_merged_from": str(source),
    }
    with atomic_open(out) as handle:
        torch.save(payload, handle)
    log.info("merged %d LoRA adapters; wrote %s", merged, out)
    return out


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
