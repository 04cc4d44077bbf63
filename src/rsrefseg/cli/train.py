"""`rsrefseg-train`: fit, select the checkpoint on val, test it once, report and save the metrics.

rsrefseg-train                                   # the synthetic default on CPU
rsrefseg-train model/clip=tiny trainer=gpu ...   # any composition
rsrefseg-train -m model.prompter.depths=[1,1,1],[2,2,2]   # a sweep
"""

from __future__ import annotations

import math

import hydra
from omegaconf import DictConfig

from rsrefseg.config.build import CONFIG_DIR
from rsrefseg.config.schema import check_config
from rsrefseg.errors import reports_errors, reports_job_errors
from rsrefseg.training.run import train

PROG = "rsrefseg-train"


@reports_errors(PROG)
@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
@reports_job_errors(PROG)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the selection metric so sweepers can optimise it."""
    check_config(cfg)
    payload = train(cfg)
    score = payload.get(f"selection/{cfg.select_on}_gIoU")
    return None if score is None or math.isnan(score) else float(score)


if __name__ == "__main__":
    main()
