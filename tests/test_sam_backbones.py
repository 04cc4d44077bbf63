"""The SAM model zoo: segment-anything vit_b/l/h and SAM 2.1 Hiera t/s/b+/l behind one interface.

Real sizes are counted (SAM 1 on the meta device; Hiera cannot be built there) and checkpoints are
written in Meta's formats from random weights; the SAM 2 image path is compared with sam2's own code.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import build_tiny_net, compose_config
from rsrefseg.config.build import CONFIG_DIR
from rsrefseg.models import Sam2Backbone, SamBackbone, build_sam2

SAM_OPTIONS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model" / "sam").glob("*.yaml"))
SENTENCES = ["the small red car left of the large building", "the ship", "white storage tank", "the tree"]

# importing sam2 here would initialise Hydra's global state for the whole session
needs_sam2 = pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed")


def sam_config(option: str, overrides: list[str] | None = None):
    return compose_config("train", [f"model/sam={option}", *(overrides or [])]).model.sam


def count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.parametrize("option", SAM_OPTIONS)
def test_every_sam_config_composes_with_the_prompter(option):
    """Also checks that ``model/sam=hiera_b+`` is a valid command-line override."""
    model = compose_config("train", [f"model/sam={option}"]).model
    resolved = OmegaConf.to_container(model, resolve=True)
    assert resolved["prompter"]["prompt_dim"] == resolved["sam"]["prompt_dim"]
    assert resolved["prompter"]["mask_size"] == resolved["sam"]["mask_size"]
    sam = resolved["sam"]
    assert sam["sam"]["image_size"] == sam["image_size"] and sam["sam"]["prompt_dim"] == sam["prompt_dim"]
    assert sam["sam"]["checkpoint"] is None


@pytest.mark.parametrize(("option", "millions"), [("vit_b", 93.74), ("vit_l", 312.34), ("vit_h", 641.09)])
def test_sam1_sizes_match_meta(option, millions):
    with torch.device("meta"):
        backbone = instantiate(sam_config(option))
    assert isinstance(backbone, SamBackbone)
    assert count(backbone) == pytest.approx(millions, rel=5e-3)


SAM2_SIZES = [
    # option, full SAM2Base (Meta's published counts), the image path we keep (docs/method.md §5.2)
    ("hiera_t", 38.96, 31.44),
    ("hiera_s", 46.06, 38.54),
    ("hiera_b+", 80.85, 73.33),
    pytest.param("hiera_l", 224.45, 216.92, marks=pytest.mark.slow),  # ~12 s to build on CPU
]


@needs_sam2
@pytest.mark.parametrize(("option", "full", "kept"), SAM2_SIZES)
def test_sam2_sizes_match_meta(option, full, kept):
    cfg = sam_config(option)
    base = instantiate(cfg.sam)
    assert count(base) == pytest.approx(full, rel=5e-3)
    backbone = Sam2Backbone(
        sam=base, prompt_dim=cfg.prompt_dim, image_size=cfg.image_size, mask_size=cfg.mask_size
    )
    assert count(backbone) == pytest.approx(kept, rel=5e-3)
    assert not any(n.startswith(("memory_", "maskmem", "obj_ptr")) for n, _ in backbone.named_parameters())


# ------------------------------------------------------------------ checkpoints in Meta's formats

CHECKPOINT_CASES = [
    ("tiny", "sam_tiny.pth"),
    pytest.param("hiera_tiny", "sam2.1_hiera_tiny_test.pt", marks=needs_sam2),
    pytest.param("vit_b", "sam_vit_b_01ec64.pth", marks=pytest.mark.slow),
    pytest.param("hiera_t", "sam2.1_hiera_tiny.pt", marks=[needs_sam2, pytest.mark.slow]),
]


def write_meta_checkpoint(option: str, path: Path, edit=None) -> dict[str, torch.Tensor]:
    """A random model saved as Meta saves it: SAM 1 a plain state dict, SAM 2.1 ``{"model": state}``."""
    torch.manual_seed(0)
    state = instantiate(sam_config(option).sam).state_dict()
    if edit is not None:
        edit(state)
    torch.save({"model": state} if option.startswith("hiera") else state, path)
    return state


@pytest.mark.parametrize(("option", "filename"), CHECKPOINT_CASES)
def test_meta_checkpoint_loads_bit_exactly(tmp_path, option, filename):
    path = tmp_path / filename
    saved = write_meta_checkpoint(option, path)
    torch.manual_seed(1)  # a different random init: only loading can make the tensors equal
    cfg = sam_config(option, [f"model.sam.sam.checkpoint={path}"])
    model = instantiate(cfg.sam)
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
    backbone = instantiate(cfg, sam=model)  # the configured backbone accepts the loaded model
    assert backbone.image_encoder is model.image_encoder


def build_error(option: str, checkpoint: Path) -> BaseException:
    """The error that building ``model.sam.sam`` with this checkpoint raises (Hydra wraps it)."""
    with pytest.raises(InstantiationException) as info:
        instantiate(sam_config(option, [f"model.sam.sam.checkpoint={checkpoint}"]).sam)
    return info.value.__cause__


@pytest.mark.parametrize("option", ["tiny", pytest.param("hiera_tiny", marks=needs_sam2)])
def test_checkpoint_with_a_missing_or_extra_key_names_key_and_file(tmp_path, option):
    key = "mask_decoder.iou_token.weight" if option == "tiny" else "sam_mask_decoder.iou_token.weight"
    missing = tmp_path / "missing.pt"
    write_meta_checkpoint(option, missing, edit=lambda state: state.pop(key))
    error = build_error(option, missing)
    assert isinstance(error, ValueError)
    assert re.search(rf"{missing}.*1 missing \[{key}\], 0 unexpected", str(error))

    extra = tmp_path / "extra.pt"
    write_meta_checkpoint(option, extra, edit=lambda state: state.update({"adapter.weight": torch.zeros(2)}))
    error = build_error(option, extra)
    assert isinstance(error, ValueError)
    assert re.search(rf"{extra}.*0 missing \[\], 1 unexpected \[adapter\.weight\]", str(error))

    error = build_error(option, tmp_path / "nowhere.pt")
    assert isinstance(error, FileNotFoundError)
    assert re.search(r"nowhere\.pt.*model\.sam\.sam\.checkpoint", str(error))


@needs_sam2
def test_sam2_checkpoint_without_the_model_key_is_rejected(tmp_path):
    path = tmp_path / "plain_state.pt"
    torch.save(instantiate(sam_config("hiera_tiny").sam).state_dict(), path)  # SAM 1's format
    error = build_error("hiera_tiny", path)
    assert isinstance(error, ValueError)
    assert re.search(r"plain_state\.pt.*model\.sam\.sam\.checkpoint.*\{\"model\": state_dict\}", str(error))


@needs_sam2
def test_unknown_sam2_size_lists_the_shipped_ones():
    with pytest.raises(
        FileNotFoundError, match=r"sam2\.1_hiera_xl\.yaml.*model\.sam\.sam\.config.*sam2\.1_hiera_b\+"
    ):
        build_sam2(config="sam2.1_hiera_xl", image_size=1024, prompt_dim=256)


# ------------------------------------------------------------------ SAM 2's image path


@pytest.fixture
def tiny_sam2():
    torch.manual_seed(0)
    return instantiate(sam_config("hiera_tiny")).eval()


@needs_sam2
def test_sam2_image_path_matches_sam2_reference(tiny_sam2):
    """Our encode/decode equals SAM 2's own preprocessing, feature preparation and decoder call."""
    from sam2.utils.transforms import SAM2Transforms

    sam, images, masks = tiny_sam2, torch.rand(2, 3, 96, 96), torch.randn(2, 1, 32, 32)
    transforms = SAM2Transforms(resolution=128, mask_threshold=0.0).transforms
    with torch.no_grad():
        ours = sam.decode(sam.encode_image(images), None, masks)
        # SAM2Base.forward_image + _prepare_backbone_features + SAM2ImagePredictor.set_image_batch
        x = torch.stack([transforms(image) for image in images])
        fpn = sam.image_encoder(x)["backbone_fpn"]
        fpn[0], fpn[1] = sam.mask_decoder.conv_s0(fpn[0]), sam.mask_decoder.conv_s1(fpn[1])
        flat = [f.flatten(2).permute(2, 0, 1) for f in fpn[-3:]]  # HW×B×C as SAM2Base keeps them
        flat[-1] = flat[-1] + sam.no_mem_embed
        feats = [f.permute(1, 2, 0).view(2, -1, *g.shape[-2:]) for f, g in zip(flat, fpn[-3:], strict=True)]
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=masks)
        reference, _, _, _ = sam.mask_decoder(
            image_embeddings=feats[-1],
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=feats[:-1],
        )
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@needs_sam2
def test_sam2_decodes_each_image_with_its_own_prompts(tiny_sam2):
    """Changing sample j's prompts (or image features) leaves sample i's logits bit-identical."""
    sam = tiny_sam2
    with torch.no_grad():
        features = sam.encode_image(torch.rand(3, 3, 64, 64))
        sparse, dense = torch.randn(3, 9, 64), torch.randn(3, 1, 32, 32)
        base = sam.decode(features, sparse, dense)
        sparse[2] += 5.0
        dense[2] *= -3.0
        features.embedding[2] += 1.0
        features.high_res[0][2] -= 1.0
        changed = sam.decode(features, sparse, dense)
    assert base.shape == (3, 1, 32, 32)
    assert torch.equal(base[:2], changed[:2])
    assert not torch.allclose(base[2], changed[2])


@needs_sam2
@pytest.mark.slow
def test_real_size_sam2_shapes():
    """Hiera-T at 1024 (~10 s on CPU): SAM 2's 64² embedding, 256² / 128² high-res levels, 256² logits."""
    sam = instantiate(sam_config("hiera_t")).eval()
    with torch.no_grad():
        features = sam.encode_image(torch.rand(1, 3, 512, 512))
        logits = sam.decode(features, torch.randn(1, 9, 256), torch.randn(1, 1, 256, 256))
    assert features.embedding.shape == (1, 256, 64, 64)
    assert [tuple(f.shape) for f in features.high_res] == [(1, 32, 256, 256), (1, 64, 128, 128)]
    assert logits.shape == (1, 1, 256, 256)


@needs_sam2
def test_dynamic_multimask_flag_is_off_by_default_and_eval_only(tiny_sam2):
    sam = tiny_sam2
    decoder = sam.mask_decoder
    with torch.no_grad():
        features = sam.encode_image(torch.rand(4, 3, 64, 64))
        sparse, dense = torch.randn(4, 9, 64), torch.randn(4, 1, 32, 32)
        all_masks, iou, _, _ = decoder.predict_masks(
            image_embeddings=features.embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=sam.prompt_encoder.mask_downscaling(dense),
            repeat_image=False,
            high_res_features=list(features.high_res),
        )
        token0 = all_masks[:, :1]
        assert not decoder.dynamic_multimask_via_stability
        assert torch.equal(sam.decode(features, sparse, dense), token0)

        decoder.dynamic_multimask_via_stability = True
        fallback = sam.decode(features, sparse, dense)
        expected, _ = decoder._dynamic_multimask_via_stability(all_masks, iou)
        assert torch.equal(fallback, expected)
        # random weights give unstable token-0 masks: the fallback swaps in multimask tokens
        assert not torch.equal(fallback, token0)
        assert torch.equal(sam.train().decode(features, sparse, dense), token0)


@needs_sam2
def test_dynamic_multimask_flag_flows_from_the_config():
    sam = instantiate(sam_config("hiera_tiny", ["model.sam.dynamic_multimask_via_stability=true"]))
    assert sam.mask_decoder.dynamic_multimask_via_stability


# ------------------------------------------------------------------ fine-tuning and the whole network


@needs_sam2
def test_lora_on_hiera_freezes_base_weights_and_changes_output_only_after_a_step():
    images = torch.rand(2, 3, 64, 64)
    reference = build_tiny_net(["model/sam=hiera_tiny"]).sam.eval()
    net = build_tiny_net(["model/sam=hiera_tiny", "model.finetune=lora"])
    sam = net.sam
    named = dict(sam.named_parameters())
    lora = [n for n in named if "lora_" in n]
    blocks = len(sam.image_encoder.trunk.blocks)
    for i in range(blocks):
        for layer in ("qkv", "proj"):
            assert f"image_encoder.trunk.blocks.{i}.attn.{layer}.lora_A.default.weight" in named
    for k in range(len(sam.image_encoder.neck.convs)):
        assert f"image_encoder.neck.convs.{k}.conv.lora_A.default.weight" in named
    assert not any(".blocks.1.proj.lora" in n for n in lora)  # the stage-change shortcut stays plain
    base = {
        n: p.detach().clone() for n, p in named.items() if n.startswith("image_encoder") and "lora_" not in n
    }
    assert not any(named[n].requires_grad for n in base) and not sam.no_mem_embed.requires_grad
    assert all(named[n].requires_grad for n in lora)

    sam.eval()
    with torch.no_grad():
        before = sam.encode_image(images).embedding
        torch.testing.assert_close(before, reference.encode_image(images).embedding, atol=0, rtol=0)
    opt = torch.optim.SGD([named[n] for n in lora], lr=1.0)
    out = net(images, SENTENCES[:2])
    out.logits.square().mean().backward()
    with torch.no_grad():
        assert torch.equal(sam.encode_image(images).embedding, before)
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(sam.encode_image(images).embedding, before)
    for n, value in base.items():
        assert torch.equal(named[n], value), n


@needs_sam2
@pytest.mark.parametrize(
    ("finetune", "train_no_mem_embed"), [("full", False), ("lora", False), ("lora", True)]
)
def test_whole_network_with_hiera_tiny_gives_every_trainable_parameter_a_gradient(
    finetune, train_no_mem_embed
):
    """One fast_dev_run-sized step of RSRefSeg2 with SAM 2: DDP without find_unused_parameters needs this.

    ``no_mem_embed`` trains in ``full`` mode, and in ``lora`` mode with the release's
    ``model.sam.train_no_mem_embed=true``.
    """
    switch = f"model.sam.train_no_mem_embed={str(train_no_mem_embed).lower()}"
    cfg = compose_config("train", ["model/sam=hiera_tiny", f"model.finetune={finetune}", switch])
    torch.manual_seed(0)
    net = instantiate(cfg.model, _convert_="partial").train()
    out = net(torch.rand(4, 3, 64, 64), SENTENCES)
    assert out.logits.shape == (4, 1, 32, 32)
    masks = (torch.rand(4, 1, 64, 64) > 0.7).float()  # label size ≠ logits size, as in the data
    instantiate(cfg.loss).for_output(out, masks)["loss"].backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    frozen_heads = ("iou_prediction_head", "pred_obj_score_head", "output_hypernetworks_mlps.1.")
    assert not any(head in n for n in trainable for head in frozen_heads)
    assert ("sam.no_mem_embed" in trainable) == (finetune == "full" or train_no_mem_embed)


@pytest.mark.parametrize("sam", ["tiny", "hiera_tiny"])
def test_lora_target_that_matches_nothing_names_the_config_key(sam):
    """Every pattern must hit a module: a typo would otherwise adapt part of the encoder, silently."""
    overrides = [f"model/sam={sam}", "model.finetune=lora", "model.sam.lora_targets=[neck_nothing]"]
    with pytest.raises(Exception, match=r"model\.sam\.lora_targets \['neck_nothing'\] match no module"):
        build_tiny_net(overrides)
