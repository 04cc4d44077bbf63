"""model.activation_checkpointing: the backbones' blocks are recomputed in backward, the gradients are
unchanged (bit-identical on CPU), and the step's live-tensor peak drops."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from conftest import build_tiny_net, compose_config
from rsrefseg.models.activation_checkpointing import recomputes_in_backward
from rsrefseg.models.cost import cpu_live_tensor_peak

SENTENCES = ["the red car", "the small house left of the road"]


def batch(count: int = len(SENTENCES)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, 64, 64, generator=generator)
    return images, (torch.rand(count, 1, 64, 64, generator=generator) > 0.5).float()


def backward(net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> None:
    out = net(images, SENTENCES)
    loss = F.binary_cross_entropy_with_logits(out.logits, masks) + out.vision_tokens.square().mean()
    (loss + out.sentence.square().mean()).backward()


def gradients(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    backward(net, *batch())
    return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def recomputed_blocks(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The first norm inside one block of each backbone (CLIP's vision and text residual blocks, SAM's
    first ViT block): a recomputation calls it again, and stops early only after the block's last
    needed tensor, so it is seen even though the block's own forward hooks are not."""
    clip, sam = net.clip.model, net.sam.image_encoder
    vision, text = clip.visual.transformer.resblocks[0], clip.transformer.resblocks[0]
    return [vision.ln_1, text.ln_1, sam.blocks[0].norm1]


def forward_calls_in_backward(net: torch.nn.Module, blocks: list[torch.nn.Module]) -> list[int]:
    calls = [0] * len(blocks)
    in_backward = [False]

    def counter(index: int):
        def hook(*_):
            calls[index] += in_backward[0]

        return hook

    handles = [block.register_forward_pre_hook(counter(i)) for i, block in enumerate(blocks)]
    try:
        out = net(*batch()[:1], SENTENCES)
        in_backward[0] = True
        (out.logits.mean() + out.sentence.mean()).backward()
    finally:
        for handle in handles:
            handle.remove()
    return calls


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_recomputation_leaves_gradients_unchanged(finetune):
    net = build_tiny_net([f"model.finetune={finetune}"]).train()
    expected = gradients(net)
    blocks = recomputed_blocks(net)
    assert forward_calls_in_backward(net, blocks) == [0, 0, 0]
    net.set_activation_checkpointing(True)
    assert recomputes_in_backward(net.sam.image_encoder.blocks[0])
    # every backbone's blocks run again during backward
    assert forward_calls_in_backward(net, blocks) == [1, 1, 1]
    got = gradients(net)
    assert got.keys() == expected.keys()
    if finetune == "lora":
        assert any("lora_A" in name for name in got)
    for name, grad in expected.items():
        assert torch.equal(got[name], grad), name  # same kernels on the same inputs: bit-identical


def test_config_switch_and_state_dict_keys():
    plain, recomputing = build_tiny_net(), build_tiny_net(["model.activation_checkpointing=true"])
    assert list(plain.state_dict()) == list(recomputing.state_dict())
    assert recomputing.clip.model.visual.transformer.grad_checkpointing
    assert recomputing.clip.model.transformer.grad_checkpointing
    assert all(recomputes_in_backward(block) for block in recomputing.sam.image_encoder.blocks)
    images = batch()[0]
    with torch.no_grad():  # same seed, same weights; evaluation runs the plain forward
        expected = plain.eval()(images, SENTENCES).logits
        assert torch.equal(recomputing.eval()(images, SENTENCES).logits, expected)
    recomputing.set_activation_checkpointing(False)
    assert not any(recomputes_in_backward(block) for block in recomputing.sam.image_encoder.blocks)


@pytest.mark.slow  # the memory profiler records every op with its stack: ~20-30 s under load
def test_activation_memory_drops():
    """Live-tensor peak of forward + backward (parameters and gradients included) at batch 2."""
    net = build_tiny_net().train()
    images, masks = batch()
    backward(net, images, masks)  # warm-up: gradients exist in both measurements
    plain = cpu_live_tensor_peak(lambda: backward(net, images, masks))
    net.set_activation_checkpointing(True)
    recomputing = cpu_live_tensor_peak(lambda: backward(net, images, masks))
    # measured: 92.4 → 83.5 MB (the parameters and their gradients, ~50 MB, are in both)
    assert recomputing < 0.95 * plain, (plain, recomputing)


@pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed")
def test_hiera_blocks_recompute_with_unchanged_gradients():
    cfg = compose_config("train", ["model/sam=hiera_tiny"]).model.sam
    torch.manual_seed(0)
    sam = instantiate(cfg).train()
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))

    def grads() -> dict[str, torch.Tensor]:
        sam.zero_grad(set_to_none=True)
        features = sam.encode_image(images)
        sam.decode(features, None, None).square().mean().backward()
        return {name: p.grad.clone() for name, p in sam.named_parameters() if p.grad is not None}

    expected = grads()
    sam.set_activation_checkpointing(True)
    assert all(recomputes_in_backward(block) for block in sam.image_encoder.trunk.blocks)
    got = grads()
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert torch.equal(got[name], grad), name
