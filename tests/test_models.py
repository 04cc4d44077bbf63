"""The composed tiny network: shapes, per-image decoding, batch invariance, fine-tune modes."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from conftest import build_tiny_net, compose_config
from rsrefseg.models import build_sam_vit

SENTENCES = ["the small red car left of the large building", "the ship", "white storage tank at the top"]


def test_forward_shapes(tiny_net):
    out = tiny_net.eval()(torch.rand(3, 3, 64, 64), SENTENCES)
    assert out.logits.shape == (3, 1, 64, 64)
    assert out.vision_tokens.shape == (3, 64, 96)
    assert out.grid_size == 8
    assert out.prompts.sparse.shape == (3, 9, 64)
    assert out.prompts.dense.shape == (3, 1, 64, 64)


def test_sam_decodes_each_image_with_its_own_prompts(tiny_net):
    """Changing sample j's prompts (or image) leaves sample i's logits bit-identical."""
    sam = tiny_net.sam.eval()
    torch.manual_seed(1)
    embeddings = sam.encode_image(torch.rand(3, 3, 64, 64))
    sparse, dense = torch.randn(3, 9, 64), torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        base = sam.decode(embeddings, sparse, dense)
        sparse2, dense2, embeddings2 = sparse.clone(), dense.clone(), embeddings.clone()
        sparse2[2] += 5.0
        dense2[2] *= -3.0
        embeddings2[2] += 1.0
        changed = sam.decode(embeddings2, sparse2, dense2)
    assert torch.equal(base[:2], changed[:2])
    assert not torch.allclose(base[2], changed[2])


def test_batch_composition_does_not_change_a_prediction(tiny_net):
    """A sample's logits are the same alone or batched with longer sentences (padding is masked)."""
    net = tiny_net.eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        batched = net(images, ["the ship", *SENTENCES[:1], "a very long sentence " * 5]).logits
        alone = net(images[:1], ["the ship"]).logits
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-4)


def test_text_is_truncated_to_the_context_length(tiny_net):
    ids = tiny_net.clip.tokenize(["word " * 200])
    assert ids.shape[1] == 32


def test_frozen_mode_trains_only_prompter_and_sam_heads():
    net = build_tiny_net(["model.finetune=frozen"])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert not any(n.startswith("clip.model.") and "logit" not in n for n in trainable)
    assert not any(n.startswith("sam.image_encoder") for n in trainable)
    assert "clip.model.logit_scale" in trainable
    assert any(n.startswith("prompter.") for n in trainable)
    assert any(n.startswith("sam.mask_decoder") for n in trainable)


def test_lora_freezes_base_weights_and_changes_output_after_a_step():
    net = build_tiny_net(["model.finetune=lora"])
    named = dict(net.named_parameters())
    lora = [n for n in named if "lora_" in n]
    assert any(".visual." in n for n in lora) and any("resblocks" in n and ".visual." not in n for n in lora)
    assert any("projection_lora" in n for n in lora) and any("sam.image_encoder.neck" in n for n in lora)
    assert any("attn.qkv" in n for n in lora) and any("attn.proj" in n for n in lora)
    base = {
        n: p.detach().clone()
        for n, p in named.items()
        if n.startswith(("clip.model.visual", "sam.image_encoder")) and "lora_" not in n
    }
    assert all(not named[n].requires_grad for n in base)

    net.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        tokens_before = net.clip.encode_image(images)
        sam_before = net.sam.encode_image(images)
    # B is zero-initialised: adapters start as the identity
    opt = torch.optim.SGD([named[n] for n in lora], lr=1.0)
    out = net(images, SENTENCES[:2])
    (out.logits.square().mean() + out.vision_tokens.square().mean()).backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(net.clip.encode_image(images), tokens_before)
        assert not torch.allclose(net.sam.encode_image(images), sam_before)
    for n, value in base.items():
        assert torch.equal(named[n], value), n


def test_unused_sam_heads_are_frozen(tiny_net):
    trainable = {n for n, p in tiny_net.named_parameters() if p.requires_grad}
    assert not any("iou_prediction_head" in n for n in trainable)
    assert not any("output_hypernetworks_mlps.1." in n for n in trainable)
    # dense prompts are used, so the "no mask" embedding never receives a gradient
    assert "sam.prompt_encoder.no_mask_embed.weight" not in trainable


def test_every_trainable_parameter_gets_a_gradient(tiny_net):
    """DDP without find_unused_parameters needs this."""
    cfg = compose_config("train")
    loss = instantiate(cfg.loss)
    out = tiny_net.train()(torch.rand(4, 3, 64, 64), [*SENTENCES, "the tree"])
    masks = (torch.rand(4, 1, 64, 64) > 0.7).float()
    terms = loss.for_output(out, masks)
    terms["loss"].backward()
    missing = [n for n, p in tiny_net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_clip_config_mismatch_fails_at_construction():
    cfg = compose_config("train", ["model.clip.grid_size=4"])
    with pytest.raises(Exception, match="grid_size"):
        instantiate(cfg.model.clip)


def test_sam_checkpoint_round_trip_and_strict_errors(tmp_path):
    cfg = compose_config("train").model.sam.sam
    args = {k: v for k, v in cfg.items() if k not in ("_target_", "checkpoint")}
    torch.manual_seed(3)
    sam = build_sam_vit(**args)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    loaded = build_sam_vit(**args, checkpoint=str(path))
    for (n, a), (_, b) in zip(sam.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    other = dict(args, encoder_depth=3, encoder_global_attn_indexes=[2])
    with pytest.raises(ValueError, match=r"sam_tiny\.pth.*missing \[image_encoder\.blocks\.2"):
        build_sam_vit(**other, checkpoint=str(path))
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        build_sam_vit(**args, checkpoint=str(tmp_path / "nowhere.pth"))


def test_every_prompter_declares_the_prompter_protocol():
    """RSRefSeg2 and the training module read these declarations; nothing probes for attributes."""
    from rsrefseg.models import ActivationV1Prompter, CascadedPrompter, Prompter

    dims = dict(vision_dim=16, text_dim=16, embed_dim=16, grid_size=4, prompt_dim=8, mask_size=16)
    small = dict(internal_dim=16, num_heads=2, mlp_dim=16)
    cascaded = CascadedPrompter(**dims, **small)
    no_dense = CascadedPrompter(**dims, **small, use_dense=False)
    v1 = ActivationV1Prompter(**dims, sparse_grid=2)
    for prompter in (cascaded, no_dense, v1):
        assert isinstance(prompter, Prompter)
    assert (cascaded.emits_queries, cascaded.uses_sentence, cascaded.dense_head is not None) == (
        True,
        True,
        True,
    )
    assert (no_dense.emits_queries, no_dense.uses_sentence, no_dense.dense_head) == (True, False, None)
    assert (v1.emits_queries, v1.uses_sentence, v1.dense_head is not None) == (False, True, True)


def test_a_prompter_without_the_declarations_is_refused_by_name(tiny_net):
    from rsrefseg.models import RSRefSeg2

    class Bare(torch.nn.Module):
        dense_head = None

    with pytest.raises(TypeError, match=r"Bare is not a Prompter.*\['emits_queries', 'uses_sentence'\]"):
        RSRefSeg2(clip=tiny_net.clip, prompter=Bare(), sam=tiny_net.sam)


def test_configure_finetuning_takes_the_backbones(tiny_net):
    from rsrefseg.models import configure_finetuning

    prompter_state = [p.requires_grad for p in tiny_net.prompter.parameters()]
    configure_finetuning({"clip": tiny_net.clip, "sam": tiny_net.sam}, "frozen")
    assert not any(p.requires_grad for p in tiny_net.sam.image_encoder.parameters())
    assert tiny_net.clip.model.logit_scale.requires_grad
    assert [p.requires_grad for p in tiny_net.prompter.parameters()] == prompter_state
    configure_finetuning({"clip": tiny_net.clip, "sam": tiny_net.sam}, "full")
    assert all(p.requires_grad for p in tiny_net.sam.image_encoder.parameters())
