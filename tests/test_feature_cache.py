"""Cached frozen features (``rsrefseg-features`` → ``data=cached_features``) stand in for the live encoders.

Tolerances (tiny composition, CPU): a float32 cache gives the live logits and losses within 1e-6
(the same fp32 features; measured: identical); a float16 cache within FP16_TOL (features rounded to
fp16; measured on 16 samples: max |Δlogit| 7.6e-5 for logits up to 0.18, |Δloss| 2.2e-5 of 9.54).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from rsrefseg.cli import features as features_cli
from rsrefseg.config.build import build_datamodule, build_module
from rsrefseg.data.cached_features import CachedFeatureDataModule, CachedFeatureDataset
from rsrefseg.data.datamodule import collate_referring
from rsrefseg.data.feature_cache import (
    FeatureCache,
    FeatureCacheError,
    check_can_cache,
    image_rows,
    model_fingerprint,
    summary_lines,
    write_feature_cache,
)
from rsrefseg.errors import ConfigError, describe

FP32_TOL = 1e-6
#: fp16 storage rounds each feature to 11 significant bits (see the module docstring)
FP16_TOL = 1e-3

#: the tiny synthetic splits the caches are written for
SIZES = ["data.sizes.train=16", "data.sizes.val=8", "data.sizes.test=8"]
FROZEN = ["model.finetune=frozen", "data.batch_size=4", "data.eval_batch_size=8"]


def write_cache(tmp_path: Path, name: str, *overrides: str) -> Path:
    cfg = compose_config("features", [*FROZEN, *SIZES, f"cache_dir={tmp_path / name}", *overrides])
    features_cli.write_features(cfg)
    return tmp_path / name


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    """A float32 and a float16 cache of the tiny frozen run's synthetic splits (one network for both)."""
    root = tmp_path_factory.mktemp("features")
    cfg = compose_config("features", [*FROZEN, *SIZES, f"cache_dir={root}"])
    module, datamodule = build_run()
    for dtype in ("float32", "float16"):
        write_feature_cache(
            module.net,
            datamodule,
            cache_dir=root / dtype,
            splits=None,
            dtype=dtype,
            batch_size=8,
            device=torch.device("cpu"),
            model_config=OmegaConf.to_container(cfg.model, resolve=True),
            data_config=OmegaConf.to_container(cfg.data, resolve=True),
            seed=cfg.seed,
        )
    return {dtype: root / dtype for dtype in ("float32", "float16")}


def build_run(*overrides: str, seed: int = 42):
    """(module, datamodule) as rsrefseg-train builds them (same seeding order); live data unless
    ``data=cached_features`` is among ``overrides``."""
    cached = any(o.startswith("data=cached_features") for o in overrides)
    cfg = compose_config("train", [*FROZEN, *([] if cached else SIZES), *overrides])
    pl.seed_everything(seed)
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule, run_config=OmegaConf.to_container(cfg, resolve=True))
    return module, datamodule


def outputs(module, batch):
    out = module.network_output(batch)
    return out.logits, module.loss.for_output(out, batch["mask"], batch.get("valid"))["loss"]


@pytest.mark.parametrize(("dtype", "atol"), [("float32", FP32_TOL), ("float16", FP16_TOL)])
def test_cached_features_give_the_live_logits_and_loss(caches, dtype, atol):
    live_module, live_data = build_run()
    cached_module, cached_data = build_run("data=cached_features", f"data.cache_dir={caches[dtype]}")
    cached_module.load_state_dict(live_module.state_dict())
    cached_data.setup("fit")
    indices = [0, 0, 3, 1]  # a repeated image: read once, decoded for both sentences
    live = collate_referring([live_data.dataset("train")[i] for i in indices])
    dataset = cached_data.dataset("train")
    cached = cached_data.collate([dataset[i] for i in indices])
    assert cached["image_encoding"].vision_tokens.shape[0] == 3
    assert cached["image_index"].tolist() == [0, 0, 2, 1]
    assert cached["image"].shape == (4, 0, 64, 64)  # the canvas and one row per sentence, no pixels
    with torch.no_grad():
        live_logits, live_loss = outputs(live_module, live)
        # the cached path never runs the image encoders
        cached_module.net.clip.encode_image = cached_module.net.sam.encode_image = None
        cached_logits, cached_loss = outputs(cached_module, cached)
    torch.testing.assert_close(cached_logits, live_logits, atol=atol, rtol=0)
    torch.testing.assert_close(cached_loss, live_loss, atol=atol, rtol=atol)


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit_losses(module, datamodule, steps: int = 3) -> list[float]:
    recorder = LossRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(module, datamodule=datamodule)
    return recorder.losses


@pytest.mark.slow  # two short fits (~10 s of CPU)
def test_training_from_a_float32_cache_follows_the_live_losses_step_by_step(caches):
    live = fit_losses(*build_run())
    cached = fit_losses(*build_run("data=cached_features", f"data.cache_dir={caches['float32']}"))
    assert len(cached) == len(live) == 3
    assert cached == pytest.approx(live, abs=FP32_TOL, rel=FP32_TOL)
    assert live[0] != live[-1]  # the steps trained


def test_a_sam2_cache_keeps_the_trainable_decoder_convolutions_live(tmp_path):
    """SAM 2.1's conv_s0 / conv_s1 train in frozen mode: the cache holds the levels before them."""
    sam2 = ("model/sam=hiera_tiny",)
    cache = write_cache(tmp_path, "sam2", "dtype=float32", "splits=[val]", *sam2)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["sam"] == "sam2_levels"
    assert set(manifest["splits"]["val"]["arrays"]) == {
        "vision_tokens",
        "sam_stride4",
        "sam_stride8",
        "sam_stride16",
    }
    live_module, live_data = build_run(*sam2)
    cached_module, cached_data = build_run(*sam2, "data=cached_features", f"data.cache_dir={cache}")
    cached_module.load_state_dict(live_module.state_dict())
    live = collate_referring([live_data.dataset("val")[i] for i in range(3)])
    cached = cached_data.collate([cached_data.dataset("val")[i] for i in range(3)])
    live_logits, _ = outputs(live_module, live)
    cached_logits, cached_loss = outputs(cached_module, cached)
    torch.testing.assert_close(cached_logits, live_logits, atol=FP32_TOL, rtol=0)
    cached_loss.backward()
    assert cached_module.net.sam.mask_decoder.conv_s0.weight.grad.abs().sum() > 0


def test_the_manifest_records_shapes_dtype_sizes_and_keys(caches):
    cache = caches["float16"]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["dtype"] == "float16" and manifest["sam"] == "sam"
    assert "prompter" not in manifest["model"] and manifest["model"]["finetune"] == "frozen"
    assert manifest["data"]["name"] == "synthetic"
    train = manifest["splits"]["train"]
    assert train["samples"] == train["images"] == 16 and len(train["image_keys"]) == 16
    assert train["arrays"]["vision_tokens"]["shape"] == [16, 64, 96]
    assert train["arrays"]["sam_features"]["shape"] == [16, 64, 16, 16]
    total = 0
    for entry in manifest["splits"].values():
        for array in entry["arrays"].values():
            path = cache / array["file"]
            assert path.stat().st_size == array["bytes"]
            total += array["bytes"]
    assert manifest["bytes"] == total
    assert (
        (16 + 8 + 8) * (64 * 96 + 64 * 16 * 16) * 2 < total < 1.01 * (16 + 8 + 8) * (64 * 96 + 64 * 256) * 2
    )
    lines = list(summary_lines(manifest, cache))
    assert lines[0] == f"feature cache {cache}: {total / 1e6:.1f} MB (float16)"
    assert not list(cache.parent.glob(f".{cache.name}.*"))  # no staging folder left


def test_samples_of_one_image_share_a_row():
    class Sentences(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 5

        def image_keys(self) -> list[str]:
            return ["a.jpg", "b.jpg", "a.jpg", "c.jpg", "b.jpg"]

    keys, rows, firsts = image_rows(Sentences())
    assert keys == ["a.jpg", "b.jpg", "c.jpg"]
    assert rows == [0, 1, 0, 2, 1]
    assert firsts == [0, 1, 3]


# --------------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------------


def test_only_frozen_mode_without_random_augmentation_is_cached():
    with pytest.raises(ConfigError, match=r"model\.finetune='full'.*model\.finetune=frozen"):
        check_can_cache({"finetune": "full"}, {})
    with pytest.raises(ConfigError, match=r"data\.hflip_p=0\.5.*data\.hflip_p=0"):
        check_can_cache({"finetune": "frozen"}, {"hflip_p": 0.5})


def test_the_script_refuses_a_non_frozen_run_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RSREFSEG_LOG_DIR", str(tmp_path / "logs"))
    for name in ("RSREFSEG_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "argv", ["rsrefseg-features", f"cache_dir={tmp_path / 'cache'}"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            features_cli.main()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert line.startswith("rsrefseg-features: error: model.finetune='full'"), line
    assert not (tmp_path / "cache").exists()


def test_training_refuses_a_cache_of_another_model_naming_the_keys(caches):
    cache = FeatureCache(caches["float32"])
    module, _ = build_run()
    model = module.run_config["model"]
    cache.check_network(module.net, model)  # the writing run's own model passes
    cache.check_network(module.net, {**model, "prompter": {"anything": 1}})  # the prompter is free
    changed = {**model, "clip": {**model["clip"], "antialias": not model["clip"]["antialias"]}}
    with pytest.raises(
        FeatureCacheError, match=r"model\.clip\.antialias: cache True, this run False"
    ) as error:
        cache.check_network(module.net, changed)
    assert describe(error.value).exit_code == 1
    with pytest.raises(FeatureCacheError, match=r"needs model\.finetune=frozen, got 'lora'"):
        cache.check_network(module.net, {**model, "finetune": "lora"})
    assert model_fingerprint(model) == cache.manifest["model"]


def test_fitting_refuses_a_cache_written_with_other_encoder_weights(caches):
    module, datamodule = build_run("data=cached_features", f"data.cache_dir={caches['float32']}", seed=7)
    with pytest.raises(FeatureCacheError, match=r"other image-encoder weights.*seed=42"):
        fit_losses(module, datamodule, steps=1)


def test_an_existing_cache_is_replaced_only_with_force(tmp_path):
    cache = write_cache(tmp_path, "cache", "splits=[test]")
    before = json.loads((cache / "manifest.json").read_text())
    cfg = compose_config("features", [*FROZEN, *SIZES, f"cache_dir={cache}", "splits=[val]"])
    with pytest.raises(FeatureCacheError, match=r"exists and is not empty; add force=true"):
        features_cli.write_features(cfg)
    assert json.loads((cache / "manifest.json").read_text()) == before
    cfg.force = True
    features_cli.write_features(cfg)
    assert list(json.loads((cache / "manifest.json").read_text())["splits"]) == ["val"]
    assert not list(tmp_path.glob(".cache.*"))


def test_a_missing_or_damaged_cache_is_named(caches, tmp_path):
    with pytest.raises(
        FeatureCacheError, match=r"is not a feature cache \(the folder does not exist\).*rsrefseg-features"
    ):
        CachedFeatureDataModule(cache_dir=str(tmp_path / "nowhere"))
    damaged = tmp_path / "damaged"
    shutil.copytree(caches["float16"], damaged)
    (damaged / "val" / "sam_features.npy").unlink()
    with pytest.raises(FeatureCacheError, match=r"val/sam_features\.npy is missing"):
        CachedFeatureDataModule(cache_dir=str(damaged))


def test_a_split_that_changed_since_the_cache_is_refused(caches):
    cache = FeatureCache(caches["float16"])
    datamodule = build_datamodule(compose_config("train", [*FROZEN, *SIZES, "data.sizes.val=6"]).data)
    with pytest.raises(FeatureCacheError, match=r"'val' split has 6 samples but .* written for 8"):
        CachedFeatureDataset(datamodule.dataset("val"), cache, "val")


def test_the_features_config_composes_and_passes_the_checks():
    from rsrefseg.config.schema import check_config

    cfg = compose_config("features", ["model.finetune=frozen", "cache_dir=/tmp/cache"])
    check_config(cfg)
    assert cfg.dtype == "float16" and cfg.force is False
    with pytest.raises(FeatureCacheError, match="add force=true"):
        write_feature_cache(
            None,  # type: ignore[arg-type]  # refused before the network is touched
            None,  # type: ignore[arg-type]
            cache_dir=Path(__file__).parent,
            splits=None,
            dtype="float16",
            batch_size=2,
            device=torch.device("cpu"),
            model_config={"finetune": "frozen"},
            data_config={},
            seed=0,
        )
