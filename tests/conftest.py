"""Shared fixtures: configs composed the way the entry points compose them, tiny networks built from them."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from rsrefseg.build import CONFIG_DIR

torch.set_flush_denormal(True)


def compose_config(name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a primary config (``train`` / ``eval``) with overrides, as Hydra's CLI would.

    Outside a Hydra run there is no run folder, so ``paths.output_dir`` points at a temporary one.
    """
    overrides = [f"paths.output_dir={tempfile.mkdtemp(prefix='rsrefseg-')}", *(overrides or [])]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def build_tiny_net(overrides: list[str] | None = None, seed: int = 0):
    """The default run's network (tiny CLIP, cascaded prompter, tiny SAM), random init."""
    torch.manual_seed(seed)
    return instantiate(compose_config("train", overrides).model, _convert_="partial")


@pytest.fixture
def tiny_net():
    return build_tiny_net()
