"""`rsrefseg-eval`: a checkpoint → the metrics table of one split (Markdown and JSON in the run folder).

    rsrefseg-eval ckpt_path=logs/train/runs/<run>/checkpoints/best-step1000.ckpt split=test

The network is rebuilt from the configuration stored in the checkpoint and loaded strictly.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rsrefseg.config.build import CONFIG_DIR
from rsrefseg.config.schema import check_config
from rsrefseg.errors import reports_errors, reports_job_errors
from rsrefseg.evaluation.run import evaluate

PROG = "rsrefseg-eval"


@reports_errors(PROG)
@hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base="1.3")
@reports_job_errors(PROG)
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
