"""Every config file composes; the tiny ones instantiate; dimensions flow by interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config
from rsrefseg.build import CONFIG_DIR, build_datamodule

CONF = Path(CONFIG_DIR)
# groups whose options are selected as `<group>=<option>` on the command line
GROUPS = [
    "data",
    "model",
    "model/clip",
    "model/prompter",
    "model/sam",
    "loss",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "debug",
    "experiment",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose_config("train", [f"{group}={option}"])
    # resolving catches broken interpolations (everything but Hydra's runtime paths)
    OmegaConf.to_container(cfg.model, resolve=True)
    OmegaConf.to_container(cfg.data, resolve=True)
    OmegaConf.to_container(cfg.trainer, resolve=True)


def test_eval_config_composes():
    cfg = compose_config("eval", ["ckpt_path=/tmp/x.ckpt", "split=val"])
    assert cfg.split == "val"


def test_group_folders_exist():
    for group in [*GROUPS, "hydra"]:
        assert options(group), f"conf/{group}/ has no options"


def test_tiny_default_instantiates_with_dimensions_flowing():
    cfg = compose_config("train")
    assert cfg.model.prompter.vision_dim == cfg.model.clip.vision_dim
    assert cfg.model.prompter.prompt_dim == cfg.model.sam.prompt_dim
    assert cfg.model.prompter.mask_size == cfg.model.sam.mask_size
    assert cfg.loss.contrastive.text_dim == cfg.model.clip.text_dim
    net = instantiate(cfg.model, _convert_="partial")
    assert net.clip.grid_size == cfg.model.clip.grid_size
    datamodule = build_datamodule(cfg.data)
    assert datamodule.group_names == ("category", "attribute", "relation")


def test_trainer_options_are_lightning_trainers():
    for option in options("trainer"):
        cfg = compose_config("train", [f"trainer={option}"])
        assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
