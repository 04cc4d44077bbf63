"""The two paths a benchmark compares: the fast path and the stock path.

A path is a set of config overrides applied to the composition (``model.sam.fused_attention``,
``model.compile``, ``data.num_workers``, …) plus what is not a config key but how the network is
called: the autocast precision, whether the sentences of one image share its encodings
(``image_index``) or the image is encoded once per sentence, and whether SAM decodes the batch at
once or image by image (what a straightforward port of the release does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from rsrefseg.errors import ConfigError
from rsrefseg.models.rsrefseg2 import RSRefSeg2
from rsrefseg.models.sam2_backbone import Sam2Features

PATHS = ("fast", "stock")
PRECISIONS = ("auto", "fp32", "bf16")
_ABSENT = object()


@dataclass
class PathSettings:
    """One path of ``bench.paths``.

    Attributes:
        name: ``fast`` or ``stock``.
        precision: ``auto`` (bf16 autocast on a GPU, fp32 on a CPU), ``fp32`` or ``bf16``.
        share_image_encodings: K sentences of an image read one encoding of it (``image_index``);
            false: the image is repeated K times and encoded once per sentence.
        per_sample_decoding: SAM decodes one image (and its prompts) at a time.
        overrides: ``key=value`` overrides of the composition.
        applied: the overrides whose key the composition has (and so took effect).
        skipped: the overrides whose key the composition lacks (a switch not in this version).
        compile_first_call_s: with ``model.compile``, each compiled part's first call in seconds
            (compilation included; the warm-up absorbs it), else empty.
    """

    name: str
    precision: str = "auto"
    share_image_encodings: bool = True
    per_sample_decoding: bool = False
    overrides: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    compile_first_call_s: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, node: Mapping[str, Any]) -> PathSettings:
        node = dict(node)
        unknown = set(node) - {"precision", "share_image_encodings", "per_sample_decoding", "overrides"}
        if unknown:
            raise ConfigError(
                f"bench.paths.{name} has unknown keys {sorted(unknown)}; expected precision, "
                "share_image_encodings, per_sample_decoding, overrides"
            )
        precision = str(node.get("precision", "auto"))
        if precision not in PRECISIONS:
            raise ConfigError(f"bench.paths.{name}.precision={precision!r}; expected one of {PRECISIONS}")
        return cls(
            name=name,
            precision=precision,
            share_image_encodings=bool(node.get("share_image_encodings", True)),
            per_sample_decoding=bool(node.get("per_sample_decoding", False)),
            overrides=[str(o) for o in node.get("overrides") or []],
        )

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """bf16 for autocast, or None (fp32)."""
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return None

    def precision_name(self, device: torch.device) -> str:
        return "bf16" if self.autocast_dtype(device) is not None else "fp32"

    def describe(self, device: torch.device) -> dict[str, Any]:
        return {
            "precision": self.precision_name(device),
            "share_image_encodings": self.share_image_encodings,
            "per_sample_decoding": self.per_sample_decoding,
            "overrides": list(self.overrides),
            "applied": list(self.applied),
            "skipped": list(self.skipped),
            "compile_first_call_s": dict(self.compile_first_call_s),
        }


def apply_overrides(cfg: DictConfig, settings: PathSettings) -> tuple[DictConfig, list[str], list[str]]:
    """A copy of ``cfg`` with the path's ``key=value`` overrides.

    A key the composition lacks is skipped, not an error: a switch may not exist in this version
    (or in this composition: ``data.group_sentences`` of an on-the-fly dataset), and the report says
    which were live.

    Returns:
        (the overridden copy, the overrides applied, the overrides skipped as absent).

    Raises:
        ConfigError: an override that is not ``key=value`` (a group selection, ``+key``, ``~key``),
            or one naming a whole config node.
    """
    cfg = cfg.copy()
    applied, skipped = [], []
    parsed = OverridesParser.create().parse_overrides(list(settings.overrides))
    for text, override in zip(settings.overrides, parsed, strict=True):
        key = override.key_or_group
        if override.is_add() or override.is_delete() or override.is_force_add() or "/" in key:
            raise ConfigError(
                f"bench.paths.{settings.name}.overrides: {text!r} is not a plain key=value override "
                "(groups, +key and ~key are not applied to a composed config)"
            )
        current = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if current is _ABSENT:
            skipped.append(text)
            continue
        if isinstance(current, DictConfig):
            raise ConfigError(
                f"bench.paths.{settings.name}.overrides: {text!r} replaces the config node {key}; "
                "select options on the command line instead"
            )
        OmegaConf.update(cfg, key, override.value(), merge=False)
        applied.append(text)
    return cfg, applied, skipped


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype``, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _row(features: torch.Tensor | Sam2Features, i: int) -> torch.Tensor | Sam2Features:
    if isinstance(features, torch.Tensor):
        return features[i : i + 1]
    return features.select(torch.tensor([i], device=features.embedding.device))


@contextlib.contextmanager
def per_sample_decoding(net: RSRefSeg2, enabled: bool = True) -> Iterator[None]:
    """While open, ``net.sam.decode`` runs image by image (the stock path), with the same result.

    The release feeds SAM's mask decoder one image and its prompts at a time; the batched decoder
    (ours) is the fast path. The instance attribute shadows the method and is removed on exit.
    """
    if not enabled:
        yield
        return
    sam = net.sam
    batched = type(sam).decode.__get__(sam)

    def decode(features: Any, sparse: torch.Tensor | None, dense: torch.Tensor | None) -> torch.Tensor:
        count = features.shape[0] if isinstance(features, torch.Tensor) else features.embedding.shape[0]
        rows = [
            batched(
                _row(features, i),
                None if sparse is None else sparse[i : i + 1],
                None if dense is None else dense[i : i + 1],
            )
            for i in range(count)
        ]
        return torch.cat(rows)

    sam.decode = decode  # type: ignore[method-assign]
    try:
        yield
    finally:
        del sam.decode


def call_layout(
    images: torch.Tensor, sentences: Sequence[str], per_image: int, *, shared: bool
) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
    """The network's arguments for N images with ``per_image`` sentences each.

    Shared: the N images and ``image_index`` (N·K, image i for sentences iK … iK+K-1). Not shared:
    each image repeated K times, no index (what running one image per sentence means).

    Args:
        images: N×3×S×S.
        sentences: N·K sentences, the K of image i consecutive.
        per_image: K.
        shared: whether the K sentences share one encoding of their image.
    """
    count = images.shape[0]
    if len(sentences) != count * per_image:
        raise ValueError(f"{len(sentences)} sentences for {count} images × {per_image} sentences per image")
    if per_image == 1:
        return images, list(sentences), None
    if shared:
        index = torch.arange(count, device=images.device).repeat_interleave(per_image)
        return images, list(sentences), index
    return images.repeat_interleave(per_image, dim=0), list(sentences), None
