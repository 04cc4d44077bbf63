"""`rsrefseg-eval`: a checkpoint → the metrics table of one split (Markdown and JSON in the run folder).

    rsrefseg-eval ckpt_path=logs/train/runs/<run>/checkpoints/best-step1000.ckpt split=test

The network is rebuilt from the configuration stored in the checkpoint and loaded strictly.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rsrefseg.build import CONFIG_DIR
from rsrefseg.evaluation.run import evaluate


@hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
