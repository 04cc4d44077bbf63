"""`rsrefseg-features`: CLIP's and SAM's image features of a dataset, written once for frozen-mode training.

    rsrefseg-features model.finetune=frozen cache_dir=/caches/synthetic-tiny
    rsrefseg-features experiment=rrsisd model.finetune=frozen data.root=/data/RRSIS-D \\
        model.clip.model.pretrained=… model.sam.sam.checkpoint=… cache_dir=/caches/rrsisd dtype=float16
    rsrefseg-train experiment=rrsisd model.finetune=frozen … \\
        data=cached_features data.cache_dir=/caches/rrsisd

The composition is the training one (conf/train.yaml), so the model, the data and the seed are
those the training run will have; the network is built as training builds it. Each split's
distinct images are encoded once with the split's own (non-random) transform; the sizes are printed
and the manifest (``manifest.json`` in ``cache_dir``) records shapes, dtype, the model config, a
digest of the encoder weights, the data config and the image keys.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from rsrefseg.config.build import CONFIG_DIR, build_datamodule, build_module
from rsrefseg.config.schema import check_config
from rsrefseg.data.feature_cache import check_can_cache, summary_lines, write_feature_cache
from rsrefseg.errors import ConfigError, reports_errors, reports_job_errors
from rsrefseg.process import prepare_process

log = logging.getLogger(__name__)

PROG = "rsrefseg-features"


def write_features(cfg: DictConfig) -> dict[str, Any]:
    """Build the network and data as ``rsrefseg-train`` would and write the cache; returns the manifest."""
    prepare_process()
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    data_config = OmegaConf.to_container(cfg.data, resolve=True)
    check_can_cache(model_config, data_config)  # before anything is built
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    splits = cfg.splits
    if splits is not None and (isinstance(splits, str) or not OmegaConf.is_list(splits)):
        raise ConfigError(f"splits={splits!r}: expected a list such as [train,val,test], or null for all")
    # the same order of seeding and building as rsrefseg.training.run, so random-init encoders match
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule, run_config=OmegaConf.to_container(cfg, resolve=True))
    return write_feature_cache(
        module.net,
        datamodule,
        cache_dir=str(cfg.cache_dir),
        splits=list(splits) if splits is not None else None,
        dtype=str(cfg.dtype),
        batch_size=cfg.batch_size,
        device=device,
        model_config=model_config,
        data_config=data_config,
        seed=int(cfg.seed),
        force=bool(cfg.force),
    )


@reports_errors(PROG)
@hydra.main(config_path=CONFIG_DIR, config_name="features", version_base="1.3")
@reports_job_errors(PROG)
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    manifest = write_features(cfg)
    print("\n".join(summary_lines(manifest, cfg.cache_dir)))


if __name__ == "__main__":
    main()
