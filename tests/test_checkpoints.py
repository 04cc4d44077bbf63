"""Our checkpoints: trainable weights + config by default, strict reload, and LoRA-merged export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config
from rsrefseg.config.build import build_module
from rsrefseg.training.checkpoint_files import export_merged, load_module, read_checkpoint
from rsrefseg.training.checkpointing import FULL, TRAINABLE, saved_keys, select_state

SENTENCES = ["the red car left of the building", "a ship", "the large gray building", "the tree"]


# (CLIP, SAM): open_clip CLIP + segment-anything, and SigLIP-style CustomTextCLIP + SAM 2.1
FAMILIES = [("tiny", "tiny"), ("tiny_siglip", "hiera_tiny")]


def backbone_files(tmp_path: Path, clip: str = "tiny", sam: str = "tiny") -> list[str]:
    """Write tiny CLIP and SAM weights as pretrained files in their true formats; overrides using them.

    CLIP: an open_clip state dict; SAM 1: Meta's plain state dict; SAM 2.1: Meta's ``{"model": ...}``.
    """
    selection = [f"model/clip={clip}", f"model/sam={sam}"]
    cfg = compose_config("train", selection)
    torch.manual_seed(123)
    torch.save(instantiate(cfg.model.clip.model).state_dict(), tmp_path / "clip.pt")
    sam_state = instantiate(cfg.model.sam.sam).state_dict()
    torch.save({"model": sam_state} if sam.startswith("hiera") else sam_state, tmp_path / "sam.pt")
    return [
        *selection,
        f"model.clip.model.pretrained={tmp_path / 'clip.pt'}",
        f"model.sam.sam.checkpoint={tmp_path / 'sam.pt'}",
    ]


def build(overrides: list[str], seed: int = 0):
    cfg = compose_config("train", overrides)
    torch.manual_seed(seed)
    return build_module(cfg, None, run_config=OmegaConf.to_container(cfg, resolve=True))


def train_one_step(module) -> None:
    """One AdamW step on all trainable weights (LoRA B starts at zero: a step makes adapters matter)."""
    torch.manual_seed(1)
    images, masks = torch.rand(4, 3, 64, 64), (torch.rand(4, 1, 64, 64) > 0.5).float()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    module.loss.for_output(module.net(images, SENTENCES), masks)["loss"].backward()
    optimizer.step()


def save_like_lightning(module, path: Path) -> dict:
    """What ModelCheckpoint writes: the module's state dict passed through on_save_checkpoint."""
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return checkpoint


def outputs(module) -> torch.Tensor:
    module.eval()
    torch.manual_seed(2)
    with torch.no_grad():
        return module.net(torch.rand(4, 3, 64, 64), SENTENCES).logits


@pytest.mark.parametrize(("clip", "sam"), FAMILIES)
def test_lora_checkpoint_holds_trainable_weights_only_and_reloads_bit_exactly(tmp_path, clip, sam):
    module = build([*backbone_files(tmp_path, clip, sam), "model.finetune=lora"])
    train_one_step(module)
    checkpoint = save_like_lightning(module, tmp_path / "run.ckpt")
    state = checkpoint["state_dict"]
    assert (
        checkpoint["rsrefseg_weights"] == TRAINABLE
        and checkpoint["rsrefseg_config"]["model"]["finetune"] == "lora"
    )
    # frozen pretrained weights stay in their files; adapters, prompter, SAM decoder, logit scale are saved
    assert not any(k.startswith("net.clip.model.") and "token_embedding" in k for k in state)
    assert not any(
        k.startswith("net.sam.image_encoder.") and "lora_" not in k and k.endswith("weight") for k in state
    )
    assert any("lora_A" in k for k in state) and any(k.startswith("net.prompter.") for k in state)
    assert "net.clip.model.logit_scale" in state and any(k.startswith("net.sam.mask_decoder.") for k in state)
    total = sum(v.numel() for v in module.state_dict().values())
    saved = sum(v.numel() for v in state.values())
    assert saved < 0.6 * total, (saved, total)

    reloaded = load_module(tmp_path / "run.ckpt")
    for key, value in module.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    assert torch.equal(outputs(reloaded), outputs(module))


def test_random_init_frozen_backbones_are_saved(tmp_path):
    """Nobody can rebuild random frozen weights, so a checkpoint must carry them."""
    module = build(["model.finetune=frozen"])
    keys = saved_keys(module)
    assert "net.clip.model.token_embedding.weight" in keys
    assert "net.sam.image_encoder.patch_embed.proj.weight" in keys
    save_like_lightning(module, tmp_path / "frozen.ckpt")
    assert torch.equal(outputs(load_module(tmp_path / "frozen.ckpt")), outputs(module))


@pytest.mark.parametrize("defect", ["missing", "unexpected", "shape"])
def test_reload_names_the_file_and_the_keys_that_do_not_fit(tmp_path, defect):
    module = build([*backbone_files(tmp_path), "model.finetune=lora"])
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    state = checkpoint["state_dict"]
    key = next(k for k in state if k.startswith("net.prompter."))
    if defect == "missing":
        del state[key]
    elif defect == "unexpected":
        state["net.clip.model.token_embedding.weight"] = module.state_dict()[
            "net.clip.model.token_embedding.weight"
        ]
        key = "net.clip.model.token_embedding.weight"
    else:
        state[key] = torch.zeros(*state[key].shape, 2)
    path = tmp_path / f"{defect}.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=str(path)) as error:
        load_module(path)
    assert key in str(error.value) and f"1 {'shape mismatches' if defect == 'shape' else defect}" in str(
        error.value
    )


def test_full_checkpoints_still_load(tmp_path):
    """checkpoint_weights=full keeps every weight (and files written before trainable-only checkpoints)."""
    module = build([*backbone_files(tmp_path), "model.finetune=lora", "checkpoint_weights=full"])
    checkpoint = save_like_lightning(module, tmp_path / "full.ckpt")
    assert checkpoint["rsrefseg_weights"] == FULL
    assert set(checkpoint["state_dict"]) == set(module.state_dict())
    assert torch.equal(outputs(load_module(tmp_path / "full.ckpt")), outputs(module))


@pytest.mark.parametrize(("clip", "sam"), FAMILIES)
def test_merged_export_folds_lora_into_the_weights(tmp_path, clip, sam):
    module = build([*backbone_files(tmp_path, clip, sam), "model.finetune=lora"])
    train_one_step(module)
    save_like_lightning(module, tmp_path / "run.ckpt")
    out = export_merged(tmp_path / "run.ckpt", tmp_path / "merged.ckpt")

    exported = torch.load(out, map_location="cpu", weights_only=False)
    assert exported["rsrefseg_weights"] == FULL
    assert not any("lora_" in k or "base_layer" in k for k in exported["state_dict"])
    model_cfg = exported["rsrefseg_config"]["model"]
    assert model_cfg["finetune"] == "frozen"
    assert model_cfg["clip"]["model"]["pretrained"] is None and model_cfg["sam"]["sam"]["checkpoint"] is None
    merged = load_module(out)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(outputs(merged), outputs(module), rtol=1e-4, atol=1e-4)
    with pytest.raises(FileExistsError, match="--force"):
        export_merged(tmp_path / "run.ckpt", out)
    export_merged(tmp_path / "run.ckpt", out, force=True)


def test_selected_state_is_a_subset_in_module_order(tmp_path):
    module = build([*backbone_files(tmp_path), "model.finetune=lora"])
    full = module.state_dict()
    state = select_state(module, full)
    assert list(state) == [k for k in full if k in state]


def _truncated(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "rsrefseg_config": {"model": {}}}, path)
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize(
    ("name", "write", "expected"),
    [
        ("empty.ckpt", lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        ("noise.ckpt", lambda p: p.write_bytes(b"not a checkpoint at all\n"), r"cannot read checkpoint"),
        ("truncated.ckpt", _truncated, r"cannot read checkpoint.*truncated"),
        ("sam.pth", lambda p: torch.save({"image_encoder.pos_embed": torch.zeros(1)}, p), r"image_encoder"),
        ("tensor.pt", lambda p: torch.save(torch.zeros(2), p), r"holds a Tensor"),
        ("other.ckpt", lambda p: torch.save({"state_dict": {}, "epoch": 3}, p), r"'state_dict', 'epoch'"),
    ],
)
def test_a_file_that_is_not_our_checkpoint_is_named(tmp_path, name, write, expected):
    """Empty, corrupt and foreign files: one plain error naming the file and what was expected."""
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=expected) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "rsrefseg_config" in message and "\n" not in message


def test_a_checkpoint_naming_modules_from_before_the_layout_still_reads(tmp_path):
    """Checkpoints written before the package layout name `rsrefseg.losses` / `rsrefseg.schedule`."""
    config = {
        "loss": {
            "_target_": "rsrefseg.losses.ReferringLoss",
            "contrastive": {"_target_": "rsrefseg.losses.X"},
        },
        "scheduler": {"_target_": "rsrefseg.schedule.build_warmup_constant_cosine"},
        "model": {"_target_": "rsrefseg.models.RSRefSeg2", "note": "rsrefseg.lossesque"},
    }
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "rsrefseg_config": config}, path)
    renamed = read_checkpoint(path)["rsrefseg_config"]
    assert renamed["loss"]["_target_"] == "rsrefseg.training.losses.ReferringLoss"
    assert renamed["loss"]["contrastive"]["_target_"] == "rsrefseg.training.losses.X"
    assert renamed["scheduler"]["_target_"] == "rsrefseg.training.schedule.build_warmup_constant_cosine"
    assert renamed["model"] == config["model"]
