"""Build open_clip models and tokenizers from a config, with or without the network.

``pretrained`` is one of: None (random init), an open_clip tag of the architecture (``webli``,
``openai``, ``laion2b_s34b_b88k``, fetched from the Hugging Face hub), a local checkpoint file, or a
local model folder (``open_clip_config.json`` + weights: open_clip's ``local-dir:`` form, a hub
snapshot). A tag that cannot be fetched is an error, never a silent random init.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from open_clip.model import CLIP, CustomTextCLIP

from rsrefseg.hub import hub_offline
from rsrefseg.models.checkpoints import mark_pretrained

PRETRAINED_KEY = "model.clip.model.pretrained"
TOKENIZER_KEY = "model.clip.tokenizer.path"
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
MODEL_FOLDER_CONFIG = "open_clip_config.json"


def _plain(value: Any) -> Any:
    """Hydra hands nested dicts as DictConfig; open_clip only accepts plain dicts."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _offline_note() -> str:
    if not hub_offline():
        return ""
    return " (offline: rsrefseg sets HF_HUB_OFFLINE=1 unless it is set; HF_HUB_OFFLINE=0 downloads)"


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or value.startswith(("~", "."))
        or value.endswith(CHECKPOINT_SUFFIXES)
        or Path(value).exists()
    )


def _folder_weights(folder: Path) -> list[Path]:
    return sorted(p for suffix in CHECKPOINT_SUFFIXES for p in folder.glob(f"*{suffix}"))


def _check_model_folder(folder: Path) -> None:
    """A model folder needs open_clip's config and at least one weights file (or open_clip builds random)."""
    missing = []
    if not (folder / MODEL_FOLDER_CONFIG).is_file():
        missing.append(MODEL_FOLDER_CONFIG)
    if not _folder_weights(folder):
        missing.append(f"a weights file ({', '.join('*' + s for s in CHECKPOINT_SUFFIXES)})")
    if missing:
        raise FileNotFoundError(
            f"CLIP model folder {folder} lacks {' and '.join(missing)}. A model folder is what "
            f"open_clip's push_to_hf_hub / a hub snapshot holds ({MODEL_FOLDER_CONFIG} + "
            f"open_clip_model.safetensors); point {PRETRAINED_KEY}= at such a folder or at a checkpoint file."
        )


def _fetch_tag(name: str, tag: str) -> bool:
    """Put the weights of ``tag`` in the local cache, or fail naming what was looked for.

    Returns whether the weights were trained with QuickGELU (OpenAI, MetaCLIP, DFN tags), which
    open_clip's plain architectures only warn about: such weights degrade under nn.GELU.
    """
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    tags = open_clip.list_pretrained_tags_by_model(name)
    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        raise ValueError(
            f"{PRETRAINED_KEY}={tag!r} is neither an existing file or folder nor an open_clip tag of "
            f"{name} (its tags: {tags}). Use null for random weights."
        )
    where = f"hub repo {cfg['hf_hub']}" if cfg.get("hf_hub") else f"url {cfg.get('url')}"

    def missing(cause: object) -> FileNotFoundError:
        return FileNotFoundError(
            f"could not get open_clip weights {name} / {tag!r} from {where}{_offline_note()}: "
            f"{str(cause).rstrip('.')}. Download them where there is a network "
            f"(open_clip.create_model({name!r}, pretrained={tag!r}) fills the Hugging Face cache), or set "
            f"{PRETRAINED_KEY}=/path/to/checkpoint.safetensors or =/path/to/model_folder "
            f"(with {MODEL_FOLDER_CONFIG})."
        )

    try:
        found = download_pretrained(cfg)
    except Exception as error:  # hub and url errors have many types; the message is what matters
        raise missing(error) from error
    if not found:
        raise missing("the tag names no download source")
    return bool(cfg.get("quick_gelu", False))


def _architecture(
    name: str | None, config: Mapping[str, Any] | None, preprocess: dict, device: str
) -> CLIP | CustomTextCLIP:
    """Random-init model from a built-in name or an inline config."""
    import open_clip
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    if (name is None) == (config is None):
        raise ValueError(
            "build_open_clip_model: give exactly one of 'name' (an open_clip architecture) or 'config' "
            "(only a model folder in 'pretrained' brings its own architecture)"
        )
    if config is None:
        return open_clip.create_model(name, force_preprocess_cfg=preprocess, device=device)
    config = dict(_plain(config))
    # open_clip's own key: SigLIP-style models keep their text tower as ``model.text``
    model_class = CustomTextCLIP if config.pop("custom_text", False) else CLIP
    model = model_class(**config)
    base = merge_preprocess_dict(PreprocessCfg(), {"size": model.visual.image_size})
    set_model_preprocess_cfg(model, merge_preprocess_dict(base, preprocess))
    return model.to(device)


def load_checkpoint_file(model: CLIP | CustomTextCLIP, path: str | Path) -> None:
    """Load a checkpoint file into a built model, strictly, through open_clip.

    open_clip reads ``.safetensors`` and torch files, unwraps a ``state_dict`` key and strips a
    ``module.`` prefix (DDP). Raises a ValueError naming the file and the config key on any mismatch.
    """
    import open_clip

    path = Path(path)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"{PRETRAINED_KEY}={path}: unknown checkpoint format {path.suffix!r}; "
            f"expected one of {CHECKPOINT_SUFFIXES} or a model folder"
        )
    try:
        open_clip.load_checkpoint(model, str(path), strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"checkpoint {path} ({PRETRAINED_KEY}) does not fit the configured {type(model).__name__}; "
            f"check that the config's architecture matches the file: {error}"
        ) from error


def _create(
    name: str | None, config: Mapping[str, Any] | None, pretrained: str | None, preprocess: dict, device: str
) -> Any:
    """Dispatch on what ``pretrained`` is: nothing, a local file or folder, or a tag."""
    import open_clip

    if not pretrained:
        return _architecture(name, config, preprocess, device)
    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if path.is_dir():
            _check_model_folder(path)
            return open_clip.create_model(
                f"local-dir:{path}", require_pretrained=True, force_preprocess_cfg=preprocess, device=device
            )
        if path.is_file():
            model = _architecture(name, config, preprocess, device)
            load_checkpoint_file(model, path)
            return model
        raise FileNotFoundError(
            f"CLIP weights not found: {path} ({PRETRAINED_KEY}). Expected a checkpoint file "
            f"({', '.join(CHECKPOINT_SUFFIXES)}), a model folder with {MODEL_FOLDER_CONFIG}, "
            "an open_clip tag, or null for random weights."
        )
    if name is None:
        raise ValueError(f"{PRETRAINED_KEY}={pretrained!r} is a tag; tags need model.clip.model.name")
    quick_gelu = _fetch_tag(name, pretrained)
    return open_clip.create_model(
        name,
        pretrained=pretrained,
        require_pretrained=True,
        force_quick_gelu=quick_gelu,
        force_preprocess_cfg=preprocess,
        device=device,
    )


def build_open_clip_model(
    *,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    pretrained: str | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    device: str = "cpu",
) -> CLIP | CustomTextCLIP:
    """Build an open_clip ``CLIP`` (OpenAI-style) or ``CustomTextCLIP`` (SigLIP-style).

    Args:
        name: an open_clip architecture (``ViT-B-16``, ``ViT-SO400M-16-SigLIP2-512``, ...); exactly
            one of ``name`` / ``config`` is needed unless ``pretrained`` is a model folder.
        config: an architecture given inline instead of ``name`` (``embed_dim``, ``vision_cfg``,
            ``text_cfg``, ``custom_text``, ...) — the tiny test and default-run backbones.
        pretrained: None (random init); an open_clip tag of ``name``; a local checkpoint file
            (``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth``, optionally under a ``state_dict`` key and
            with a ``module.`` prefix), loaded strictly; or a local model folder (``open_clip_config.json``
            + weights), whose own config then defines the architecture.
        image_mean, image_std: normalisation to record in the model's preprocess config. Tags and
            model folders bring their own; a bare checkpoint file brings none, and open_clip's default
            is OpenAI's, which is wrong for SigLIP (0.5 / 0.5).
        device: ``cpu``, ``cuda``, or ``meta`` (structure only: parameter counts without memory).
    """
    meta = str(device) == "meta"
    if meta and pretrained:
        raise ValueError(f"device='meta' builds without weights; set {PRETRAINED_KEY}=null")
    preprocess = {
        k: tuple(v) for k, v in (("mean", _plain(image_mean)), ("std", _plain(image_std))) if v is not None
    }
    # open_clip's device='meta' still initialises every tensor on the CPU first (minutes for SO400M)
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = _create(name, config, pretrained, preprocess, str(device))
    if pretrained:
        # our checkpoints then leave these frozen weights out: a fresh build reloads them from here
        local = _looks_like_path(pretrained)
        mark_pretrained(model, Path(pretrained).expanduser() if local else f"open_clip {name} / {pretrained}")
    if not isinstance(model, CLIP | CustomTextCLIP):
        raise TypeError(
            f"build_open_clip_model: {name or 'config'} builds {type(model).__name__}; "
            "ClipEncoder supports open_clip.CLIP and CustomTextCLIP"
        )
    return model


def build_tokenizer(
    *, name: str | None = None, path: str | None = None, context_length: int | None = None
) -> Any:
    """An open_clip tokenizer: ``list[str] → B×context_length`` token ids, truncating longer text.

    Args:
        name: the open_clip architecture whose tokenizer to use; None = open_clip's bundled BPE
            (offline). SigLIP / SigLIP 2 use Hugging Face tokenizers fetched from the hub.
        path: a local tokenizer folder instead of the hub: a saved Hugging Face tokenizer
            (``AutoTokenizer.from_pretrained(folder)`` loads it) or an open_clip model folder with
            ``open_clip_config.json``. ``name`` still supplies the text cleaning and context length.
        context_length: tokens per sentence; None = the architecture's.
    """
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    text_cfg: dict[str, Any] = {}
    if name is not None:
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise ValueError(f"model.clip.tokenizer.name={name!r} is not an open_clip architecture")
        text_cfg = model_cfg.get("text_cfg", {})
    if path is not None:
        folder = Path(str(path)).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"tokenizer folder not found: {folder} ({TOKENIZER_KEY}). Expected a saved Hugging "
                "Face tokenizer (tokenizer.json / tokenizer_config.json) or a model folder with "
                f"{MODEL_FOLDER_CONFIG}."
            )
        if (folder / MODEL_FOLDER_CONFIG).is_file():
            return open_clip.get_tokenizer(f"local-dir:{folder}", context_length=context_length)
        try:
            return HFTokenizer(
                str(folder),
                context_length=context_length or text_cfg.get("context_length", 77),
                tokenizer_mode=text_cfg.get("tokenizer_mode"),
                **text_cfg.get("tokenizer_kwargs", {}),
            )
        except (OSError, ValueError) as error:
            raise FileNotFoundError(
                f"no Hugging Face tokenizer in {folder} ({TOKENIZER_KEY}): {error}"
            ) from error
    if name is None:
        return open_clip.SimpleTokenizer(context_length=context_length or 77)
    hub_name = text_cfg.get("hf_tokenizer_name")
    try:
        return open_clip.get_tokenizer(name, context_length=context_length)
    except Exception as error:  # transformers raises OSError / ValueError / hub errors
        if not hub_name:
            raise
        raise FileNotFoundError(
            f"could not load the Hugging Face tokenizer of {name} from hub repo {hub_name}"
            f"{_offline_note()}: {str(error).rstrip('.')}. Save it where there is a network "
            f"(transformers.AutoTokenizer.from_pretrained({hub_name!r}).save_pretrained('/path/tok')) "
            f"and set {TOKENIZER_KEY}=/path/tok (a hub snapshot folder of the model works too)."
        ) from error


def tokenizer_special_ids(tokenizer: Any) -> tuple[int | None, int | None]:
    """(pad id, end-of-sentence id) of an open_clip tokenizer; None where the tokenizer does not say."""
    import open_clip

    if isinstance(tokenizer, open_clip.SimpleTokenizer):
        return 0, tokenizer.eot_token_id  # open_clip's BPE zero-fills after <end_of_text>
    inner = getattr(tokenizer, "tokenizer", None)  # HFTokenizer / SigLipTokenizer wrap a transformers one
    if inner is not None:
        return getattr(inner, "pad_token_id", None), getattr(inner, "eos_token_id", None)
    return None, None
