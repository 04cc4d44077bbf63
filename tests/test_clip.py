"""The CLIP zoo: every config, both open_clip families, every weight format, offline errors, LoRA."""

from __future__ import annotations

import copy
import functools
import json
import re
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config
from rsrefseg.config.build import CONFIG_DIR
from rsrefseg.models import ClipEncoder, LoraSettings, build_open_clip_model, build_tokenizer
from rsrefseg.models.checkpoints import pretrained_prefixes
from rsrefseg.models.clip_encoder import sentence_lengths
from rsrefseg.models.clip_loading import load_checkpoint_file

CLIP_OPTIONS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model" / "clip").glob("*.yaml"))
# what open_clip builds for these architectures (random init), in millions
REAL_SIZE = {
    "vit_b16": 149.62,
    "vit_l14": 427.62,
    "siglip_so400m_384": 877.96,
    "siglip2_so400m_512": 1136.56,
}
SIGLIP_STYLE = ("siglip_so400m_384", "siglip2_so400m_512")
WORDS = ["the", "a", "small", "red", "car", "ship", "left", "of", "large", "building", "white", "tank"]


@functools.cache
def _composed(option: str, overrides: tuple[str, ...]):
    # composing costs ~0.5 s; most tests here read the same few configs
    return compose_config("train", [f"model/clip={option}", *overrides])


def clip_config(option: str, *overrides: str):
    return copy.deepcopy(_composed(option, overrides).model.clip)


def build_clip(option: str, *overrides: str, seed: int = 0) -> ClipEncoder:
    torch.manual_seed(seed)
    return instantiate(clip_config(option, *overrides), _convert_="partial")


def stated_dims(clip: ClipEncoder) -> dict:
    keys = ("vision_dim", "text_dim", "embed_dim", "grid_size", "image_size")
    return {k: getattr(clip, k) for k in keys}


def inline_architecture(option: str) -> dict:
    return OmegaConf.to_container(clip_config(option).model.config, resolve=True)


def write_siglip_like_tokenizer(folder: Path) -> Path:
    """A word-level Hugging Face tokenizer shaped like SigLIP's T5 one: it appends ``</s>`` and pads
    with that same id (1), the case where counting non-pad ids would drop the end token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unused>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="</s>", pad_token="</s>", unk_token="<unk>", model_max_length=64
    )
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def siglip_clip() -> ClipEncoder:
    """The tiny SigLIP-style encoder in eval mode, for tests that only read it."""
    return build_clip("tiny_siglip").eval()


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    return write_siglip_like_tokenizer(tmp_path_factory.mktemp("siglip_tokenizer"))


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """Offline with an empty cache, whatever this machine has downloaded before."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", CLIP_OPTIONS)
def test_clip_config_composes_and_its_dims_flow(option):
    cfg = _composed(option, ())
    clip = OmegaConf.to_container(cfg.model.clip, resolve=True)
    for key in ("vision_dim", "text_dim", "embed_dim", "grid_size"):
        assert cfg.model.prompter[key] == clip[key], key
    assert clip["lora_targets"], "every CLIP config states its LoRA placement"


@pytest.mark.parametrize("option", sorted(REAL_SIZE))
def test_real_size_clip_builds_on_meta_like_open_clip(option, tokenizer_folder):
    overrides = ["model.clip.model.pretrained=null", "+model.clip.model.device=meta"]
    if option in SIGLIP_STYLE:  # their hub tokenizers are not on this machine
        overrides.append(f"model.clip.tokenizer.path={tokenizer_folder}")
    cfg = clip_config(option, *overrides)
    clip = instantiate(cfg, _convert_="partial")  # dims are checked against the model here
    millions = sum(p.numel() for p in clip.model.parameters()) / 1e6
    assert millions == pytest.approx(REAL_SIZE[option], rel=0.005)
    assert next(clip.model.parameters()).device.type == "meta"
    assert clip.pads_to_context == (option in SIGLIP_STYLE)

    # the configured LoRA patterns reach every attention block of both towers (docs/method.md §6)
    names = [n for n, _ in clip.model.named_modules()]
    hits = [n for n in names if any(re.fullmatch(t, n) for t in cfg.lora_targets)]
    vision_blocks = {n.split(".attn")[0] for n in names if n.startswith("visual.") and n.endswith(".attn")}
    text_blocks = {n.split(".attn")[0] for n in names if not n.startswith("visual.") and n.endswith(".attn")}
    per_block = 2 if option in SIGLIP_STYLE else 1  # timm: qkv + proj; open_clip: the whole MHA
    assert len([h for h in hits if h.startswith("visual.")]) == per_block * len(vision_blocks) > 0
    assert len([h for h in hits if not h.startswith("visual.")]) == len(text_blocks) > 0


def test_timm_tower_dimension_mismatch_fails_at_construction(siglip_clip):
    dims = dict(stated_dims(siglip_clip), grid_size=9)
    with pytest.raises(ValueError, match=r"grid_size': \(9, 10\)"):
        ClipEncoder(model=siglip_clip.model, tokenizer=siglip_clip.tokenizer, **dims)


# --- the SigLIP-style family end to end ------------------------------------------------------------


def test_tiny_siglip_tokens_padding_and_pooling(siglip_clip):
    clip = siglip_clip
    assert type(clip.model).__name__ == "CustomTextCLIP" and clip.pads_to_context
    assert clip.model.visual.trunk.num_prefix_tokens == 1  # test_vit3's register token
    with torch.no_grad():
        vision = clip.encode_image(torch.rand(2, 3, 64, 64))
        text = clip.encode_text(["the ship", "word " * 100])
    assert vision.shape == (2, 10 * 10, 96)  # prefix token dropped
    assert text.tokens.shape == (2, 32, 96) and text.sentence.shape == (2, 96)
    # <start> the ship <end>, then padding; the over-long sentence is truncated and fills the context
    assert text.padding_mask.tolist() == [[False] * 4 + [True] * 28, [False] * 32]
    assert clip.tokenize(["word " * 100])[0, -1] == clip.eos_token_id
    torch.testing.assert_close(clip.mean.flatten(), torch.full((3,), 0.5))


@pytest.mark.parametrize("option", ["tiny", "tiny_siglip"])
def test_sentence_embedding_is_independent_of_the_batch(option, request):
    """docs/deviations.md §1: a sentence reads the same alone or next to longer ones."""
    clip = request.getfixturevalue("siglip_clip") if option == "tiny_siglip" else build_clip(option).eval()
    with torch.no_grad():
        alone = clip.encode_text(["the ship"])
        batched = clip.encode_text(["the ship", "the small red car left of the large white building"])
    valid = int((~alone.padding_mask[0]).sum())
    assert torch.equal(batched.padding_mask[0, :valid], alone.padding_mask[0, :valid])
    assert batched.padding_mask[0, valid:].all()
    torch.testing.assert_close(batched.sentence[:1], alone.sentence, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(batched.tokens[:1, :valid], alone.tokens[:, :valid], atol=1e-6, rtol=1e-5)
    if clip.pads_to_context:
        # why SigLIP pads to its full context: trimming moves the pooled "last" position
        ids = clip.tokenize(["the ship"])[:, :valid]
        _, pooled = clip.text_tower.tokens(clip.model, ids)
        assert not torch.allclose(clip.model.text.text_projection(pooled), alone.sentence, atol=1e-3)


def test_sentence_lengths_count_to_the_end_token():
    # open_clip's BPE pads with 0, which is also the token "!": "the ship!" must keep "!" and <end>
    bpe = torch.tensor([[49406, 518, 1158, 0, 49407, 0, 0], [49406, 518, 49407, 0, 0, 0, 0]])
    assert sentence_lengths(bpe, pad_id=0, eos_id=49407).tolist() == [5, 3]
    # T5-style: the end token is also the padding id; the first one belongs to the sentence
    t5 = torch.tensor([[7, 8, 1, 1, 1], [7, 8, 9, 10, 1]])
    assert sentence_lengths(t5, pad_id=1, eos_id=1).tolist() == [3, 5]
    assert sentence_lengths(t5, pad_id=1, eos_id=None).tolist() == [2, 4]


def test_tokenizer_context_must_fill_a_last_pooling_tower(siglip_clip):
    short = build_tokenizer(context_length=16)
    with pytest.raises(ValueError, match=r"exactly 32.*tokenizer\.context_length=32"):
        ClipEncoder(model=siglip_clip.model, tokenizer=short, **stated_dims(siglip_clip))


# --- weights: every local format, bit-exact ------------------------------------------------------


def _assert_same_weights(source: torch.nn.Module, loaded: torch.nn.Module, label: str = "") -> None:
    own, other = source.state_dict(), loaded.state_dict()
    assert own.keys() == other.keys(), label
    for key, value in own.items():
        assert torch.equal(value, other[key]), f"{label}: {key}"


def _write_checkpoint(model: torch.nn.Module, path: Path, fmt: str) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif fmt == "state_dict_key":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif fmt == "module_prefix":  # what a DDP-wrapped model saves
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)


FORMATS = {  # every on-disk form a state dict arrives in
    "plain .bin": ("plain", ".bin"),
    "state_dict key .pt": ("state_dict_key", ".pt"),
    "module. prefix .pth": ("module_prefix", ".pth"),
    "safetensors": ("safetensors", ".safetensors"),
}


@pytest.mark.parametrize("option", ["tiny", "tiny_siglip"])
def test_checkpoint_files_load_bit_exactly(option, tmp_path, request):
    architecture = inline_architecture(option)
    torch.manual_seed(1)
    source = (
        request.getfixturevalue("siglip_clip").model
        if option == "tiny_siglip"
        else build_open_clip_model(config=architecture)
    )
    paths = {}
    for label, (fmt, suffix) in FORMATS.items():
        paths[label] = tmp_path / f"{fmt}{suffix}"
        _write_checkpoint(source, paths[label], fmt)
    torch.manual_seed(2)  # a different random init, so only the file can make them equal
    target = build_open_clip_model(config=architecture, pretrained=str(paths["module. prefix .pth"]))
    _assert_same_weights(source, target, "module. prefix .pth through build_open_clip_model")
    # recorded, so our checkpoints can leave the frozen CLIP weights to this file
    assert pretrained_prefixes(target) == {"": str(paths["module. prefix .pth"])}
    assert pretrained_prefixes(source) == {}
    for label, path in paths.items():
        with torch.no_grad():
            for tensor in target.state_dict().values():
                tensor.zero_()
        load_checkpoint_file(target, path)
        _assert_same_weights(source, target, label)


def test_model_folder_with_its_tokenizer_loads_through_the_config(tmp_path, tokenizer_folder):
    """open_clip's local-dir / hub-snapshot layout: config + weights + tokenizer in one folder."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    architecture = inline_architecture("tiny_siglip")
    torch.manual_seed(1)
    source = build_open_clip_model(config=architecture)
    folder = tmp_path / "snapshot"
    folder.mkdir()
    save_file(source.state_dict(), str(folder / "open_clip_model.safetensors"))
    architecture["text_cfg"]["hf_tokenizer_name"] = "timm/ViT-B-16-SigLIP"  # open_clip then reads the folder
    preprocess = {"mean": [0.25, 0.5, 0.75], "std": [0.5, 0.5, 0.5]}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": architecture, "preprocess_cfg": preprocess})
    )
    AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(folder)

    clip = build_clip(
        "tiny_siglip",
        f"model.clip.model.pretrained={folder}",
        "model.clip.model.image_mean=null",  # the folder's own normalisation applies
        "model.clip.model.image_std=null",
        f"model.clip.tokenizer.path={folder}",
        seed=2,
    )
    _assert_same_weights(source, clip.model)
    torch.testing.assert_close(clip.mean.flatten(), torch.tensor(preprocess["mean"]))
    assert clip.pad_token_id == clip.eos_token_id == 1
    text = clip.encode_text(["the red ship"])
    assert text.tokens.shape == (1, 32, 96)
    assert (~text.padding_mask).sum() == 4  # three words and </s>


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    architecture = inline_architecture("tiny")
    path = tmp_path / "other.safetensors"
    deeper = dict(architecture, vision_cfg=dict(architecture["vision_cfg"], layers=5))
    _write_checkpoint(build_open_clip_model(config=deeper), path, "safetensors")
    expected = r"(?s)other\.safetensors.*model\.clip\.model\.pretrained.*resblocks\.4"
    with pytest.raises(ValueError, match=expected):
        build_open_clip_model(config=architecture, pretrained=str(path))


def test_siglip_tokenizer_from_a_local_folder(tokenizer_folder):
    tokenizer = build_tokenizer(name="ViT-SO400M-16-SigLIP2-512", path=str(tokenizer_folder))
    ids = tokenizer(["The red ship.", "the " * 200])
    assert ids.shape == (2, 64)  # SigLIP's context, from the architecture
    red, ship = 3 + WORDS.index("red"), 3 + WORDS.index("ship")
    # SigLIP's "canonicalize" cleaning (lower case, no punctuation) comes from the architecture
    assert ids[0, :4].tolist() == [3, red, ship, 1] and (ids[0, 4:] == 1).all()
    assert ids[1, -1] == 1 and (ids[1, :-1] == 3).all()  # truncated, </s> kept


# --- offline: fail fast, say what was looked for and which key to set ----------------------------


@pytest.mark.parametrize(
    ("name", "tag", "source"),
    [
        ("ViT-SO400M-16-SigLIP2-512", "webli", "timm/ViT-SO400M-16-SigLIP2-512"),
        ("ViT-B-16", "openai", "timm/vit_base_patch16_clip_224.openai"),
    ],
)
def test_offline_tag_fails_fast_naming_the_source_and_the_key(name, tag, source, empty_hub_cache):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as error:
        build_open_clip_model(name=name, pretrained=tag)
    assert time.perf_counter() - start < 1.0
    message = str(error.value)
    assert tag in message and source in message and "model.clip.model.pretrained=" in message


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"'webli2'.*its tags: \['webli'\]"):
        build_open_clip_model(name="ViT-SO400M-16-SigLIP2-512", pretrained="webli2")


def test_missing_local_checkpoint_fails_fast(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"nowhere\.safetensors \(model\.clip\.model\.pretrained\)"):
        build_open_clip_model(name="ViT-B-16", pretrained=str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"lacks open_clip_config\.json and a weights file"):
        build_open_clip_model(name="ViT-B-16", pretrained=str(tmp_path))
    assert time.perf_counter() - start < 1.0


def test_offline_tokenizer_fails_fast_naming_the_repo_and_the_key(empty_hub_cache, tmp_path):
    import transformers  # noqa: F401  (its import time is not the failure's)

    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as error:
        build_tokenizer(name="ViT-SO400M-16-SigLIP2-512")
    assert time.perf_counter() - start < 1.0
    assert "timm/ViT-SO400M-16-SigLIP2-512" in str(error.value)
    assert "model.clip.tokenizer.path=" in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"nowhere \(model\.clip\.tokenizer\.path\)"):
        build_tokenizer(name="ViT-SO400M-16-SigLIP2-512", path=str(tmp_path / "nowhere"))


# --- fine-tuning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["tiny", "tiny_siglip"])
def test_lora_on_both_towers_and_the_projection(option):
    clip = build_clip(option).eval()
    with torch.no_grad():  # test_vit3's LayerScale starts at 1e-5, which would hide one step's change
        for name, parameter in clip.model.visual.named_parameters():
            if name.endswith((".ls1.gamma", ".ls2.gamma")):
                parameter.fill_(1.0)
    images, sentences = torch.rand(2, 3, 64, 64), ["the ship", "a red car"]
    with torch.no_grad():
        vision, text = clip.encode_image(images), clip.encode_text(sentences)
    clip.freeze_pretrained()
    clip.add_lora(LoraSettings())
    named = dict(clip.named_parameters())
    lora = [n for n in named if "lora_" in n]
    assert any(n.startswith("model.visual.") and ".attn" in n for n in lora)
    assert any(n.startswith(("model.transformer.", "model.text.transformer.")) for n in lora)
    assert any("projection_lora" in n or "text_projection.lora_" in n for n in lora)
    base = {n: p.detach().clone() for n, p in named.items() if "lora_" not in n and "logit" not in n}
    assert all(not named[n].requires_grad for n in base)
    assert all(named[n].requires_grad for n in lora)

    with torch.no_grad():  # B = 0: adapters start as the identity
        torch.testing.assert_close(clip.encode_image(images), vision)
        torch.testing.assert_close(clip.encode_text(sentences).sentence, text.sentence)
    opt = torch.optim.SGD([named[n] for n in lora], lr=1.0)
    out = clip.encode_text(sentences)
    (clip.encode_image(images).square().mean() + out.sentence.square().mean() + out.tokens.mean()).backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(clip.encode_image(images), vision)
        assert not torch.allclose(clip.encode_text(sentences).sentence, text.sentence)
    for n, value in base.items():
        assert torch.equal(named[n], value), n


def test_lora_target_that_matches_nothing_fails():
    clip = build_clip("tiny", "model.clip.lora_targets=[visual\\.nothing]")
    with pytest.raises(ValueError, match=r"lora_targets \['visual\\\\.nothing'\] match no module"):
        clip.add_lora(LoraSettings())


def test_tiny_siglip_network_gives_every_trainable_parameter_a_gradient():
    """DDP without find_unused_parameters needs this; the MAP head of the timm trunk is frozen."""
    torch.manual_seed(0)
    cfg = compose_config("train", ["model/clip=tiny_siglip"])
    net = instantiate(cfg.model, _convert_="partial").train()
    assert not any(p.requires_grad for p in net.clip.model.visual.trunk.attn_pool.parameters())
    out = net(torch.rand(2, 3, 64, 64), ["the ship", "a red car left of the building"])
    terms = instantiate(cfg.loss).for_output(out, (torch.rand(2, 1, 64, 64) > 0.7).float())
    terms["loss"].backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("antialias", [True, False])
def test_clip_resize_antialias_switch(antialias):
    """Ours antialiases the downsampling to CLIP's input; model.clip.antialias=false is the release's."""
    clip = build_clip("tiny", f"model.clip.antialias={str(antialias).lower()}").eval()
    images = torch.rand(2, 3, 256, 256)
    resized = torch.nn.functional.interpolate(
        images, size=(64, 64), mode="bilinear", align_corners=False, antialias=antialias
    )
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_image(images), clip.encode_image(resized))
    assert clip_config("tiny").antialias is True


def test_release_text_padding_follows_the_batch_only_with_both_switches():
    """model.clip.pad_to_longest + model.prompter.text_padding_mask=false reproduce the release: a
    SigLIP-style sample's logits depend on the longest sentence of its batch; ours do not."""
    from conftest import build_tiny_net

    long = "the small red car left of the large white building next to the tank"
    images = torch.rand(2, 3, 64, 64)
    deltas = {}
    for switches in (
        (),
        ("model.clip.pad_to_longest=true",),
        ("model.clip.pad_to_longest=true", "model.prompter.text_padding_mask=false"),
    ):
        net = build_tiny_net(["model/clip=tiny_siglip", *switches]).eval()
        with torch.no_grad():
            alone = net(images[:1], ["the ship"]).logits
            batched = net(images, ["the ship", long]).logits[:1]
        deltas[len(switches)] = (batched - alone).abs().max().item()
    assert deltas[0] < 1e-4, deltas
    # the tower alone already reads the pads (bidirectional, pooling the last position)
    assert deltas[1] > 1e-3 and deltas[2] > 1e-3, deltas
