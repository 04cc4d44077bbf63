"""`rsrefseg-bench`: throughput of a composition, the fast path against the stock path in one run.

    rsrefseg-bench quick=true                      # the tiny default composition, a few small figures
    rsrefseg-bench model/clip=siglip2_so400m_512 model/sam=hiera_l model.clip.model.pretrained=null
    rsrefseg-bench suite=gpu out_dir=/path/tables  # the README's GPU tables in one command

Inference (images/s, sentences/s at N images × K sentences), training (samples/s of full optimizer
steps), the data loader alone, peak memory and MFU, each for both paths, with their ratio; see
conf/bench.yaml and :mod:`rsrefseg.bench`. Writes ``bench.json`` (schema:
:mod:`rsrefseg.bench.report`) and ``bench.txt`` into ``out_dir`` (the run folder by default).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rsrefseg.bench.suite import run_configured
from rsrefseg.config.build import CONFIG_DIR
from rsrefseg.config.schema import check_config
from rsrefseg.errors import reports_errors, reports_job_errors
from rsrefseg.process import prepare_process

log = logging.getLogger(__name__)

PROG = "rsrefseg-bench"


@reports_errors(PROG)
@hydra.main(config_path=CONFIG_DIR, config_name="bench", version_base="1.3")
@reports_job_errors(PROG)
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    prepare_process()
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    choices = dict(hydra_cfg.runtime.choices) if hydra_cfg else {}
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg else []
    for path in run_configured(cfg, choices=choices, overrides=overrides):
        log.info("written %s", path)
    log.info("tables in %s", Path(str(cfg.out_dir)).resolve())


if __name__ == "__main__":
    main()
