"""What the model sees: the intermediate maps of docs/method.md §2 for one sentence on one image.

Every map is returned at the image's own size, through the same crop-and-resize path as the mask.

- ``clip_similarity``: cosine between each CLIP patch token (V0, mapped into the image–text space
  by CLIP's own projection) and the sentence embedding t — where CLIP alone puts the referent,
  before the prompter.
- ``stage1`` / ``stage2``: the same cosine after the prompter's first-order activation (V1) and
  second-order re-activation (V2), read through the dense head's projection (the map the network
  itself reads the sentence from; without a dense head, CLIP's projection). The first-order
  ablation has no Stage 2 re-activation: no ``stage2``.
- ``dense_prompt``: the dense prompt's logits (SAM's mask prompt).
- ``sparse_attention``: P×H×W, where each sparse prompt token attends over the image tokens in
  its last cross-attention (softmax weights, averaged over heads).
- ``sam_logits``: SAM's final mask logits (the mask is where they exceed the threshold's logit).

Prompters other than the cascade (``activation_v1``) yield the maps their structure has.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsrefseg.evaluation.scoring import logit_threshold
from rsrefseg.predict.images import ImageInput, to_image_tensor

if TYPE_CHECKING:
    from rsrefseg.predict.predictor import Prediction, Predictor

#: the maps in pipeline order, with what each shows (for plots and reports)
MAPS = {
    "clip_similarity": "CLIP patch–sentence cosine (before the prompter)",
    "stage1": "after Stage 1 (first-order activation)",
    "stage2": "after Stage 2 (second-order re-activation)",
    "dense_prompt": "dense prompt (logits)",
    "sparse_attention": "sparse prompts' attention over the image",
    "sam_logits": "SAM's mask logits",
}


@dataclass
class Explanation:
    """Attributes:
    prediction: the sentence's :class:`~rsrefseg.predict.predictor.Prediction`.
    maps: name → H×W float32 (``sparse_attention``: P×H×W), the keys of :data:`MAPS` the prompter has.
    """

    prediction: Prediction
    maps: dict[str, np.ndarray]


class PrompterProbe:
    """Forward hooks that record V1, V2 and the sparse prompts' attention while the prompter runs."""

    def __init__(self, prompter: nn.Module) -> None:
        self.prompter = prompter
        self.seen: dict[str, Tensor] = {}

    @contextmanager
    def recording(self) -> Iterator[dict[str, Tensor]]:
        handles = []
        first = getattr(self.prompter, "first_order", None)
        if first:
            handles.append(first[-1].register_forward_hook(self._keep_image("stage1")))
        second = getattr(self.prompter, "second_order", None)
        if second and second[-1].activation is not None:
            handles.append(second[-1].register_forward_hook(self._keep_image("stage2")))
        prompt_layers = [
            layer
            for layer in (second or getattr(self.prompter, "prompt_layers", None) or [])
            if layer.prompt_from_image is not None
        ]
        if prompt_layers:
            attention = prompt_layers[-1].prompt_from_image.cross.attn
            handles.append(attention.register_forward_hook(self._keep_attention))
        try:
            yield self.seen
        finally:
            for handle in handles:
                handle.remove()

    def _keep_image(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: tuple) -> None:
            self.seen[name] = output[0].detach()

        return hook

    def _keep_attention(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        q, k = inputs[0], inputs[1]
        queries, keys = module._split_heads(module.q_proj(q)), module._split_heads(module.k_proj(k))
        scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
        self.seen["sparse_attention"] = scores.float().softmax(dim=-1).mean(dim=1).detach()  # B×P×g²


def explain(predictor: Predictor, image: ImageInput, sentence: str) -> Explanation:
    """Run one sentence on one image with the probe on; see the module docstring for the maps."""
    net = predictor.net
    [text] = predictor.clean([sentence])
    canvas = predictor.canvas([to_image_tensor(image)])
    probe = PrompterProbe(net.prompter)
    with probe.recording() as seen:
        output = predictor.forward(canvas, [text], [0])
    with torch.inference_mode():
        grid_maps = _grid_maps(net, output, seen)
    maps = {name: predictor.to_images(value, canvas, [0])[0].numpy() for name, value in grid_maps.items()}
    maps = {name: (value if name == "sparse_attention" else value[0]) for name, value in maps.items()}
    logits = maps["sam_logits"]
    prediction = _prediction(text, logits, predictor.threshold)
    return Explanation(prediction=prediction, maps={name: maps[name] for name in MAPS if name in maps})


def _grid_maps(net: nn.Module, output, seen: dict[str, Tensor]) -> dict[str, Tensor]:
    """Name → 1×C×m×m maps over the input canvas."""
    g = output.grid_size
    sentence = F.normalize(output.sentence.float(), dim=-1)

    def grid(values: Tensor) -> Tensor:  # 1×g² → 1×1×g×g
        return values.reshape(1, 1, g, g)

    def cosine(features: Tensor) -> Tensor:  # 1×g²×E → 1×1×g×g
        return grid(F.normalize(features.float(), dim=-1) @ sentence[0])

    maps: dict[str, Tensor] = {}
    clip_space = net.clip.embed_patches(output.vision_tokens)
    if clip_space is not None:
        maps["clip_similarity"] = cosine(clip_space)
    dense_head = getattr(net.prompter, "dense_head", None)
    for stage in ("stage1", "stage2"):
        if stage not in seen:
            continue
        tokens = seen[stage]
        if dense_head is not None:
            projected = dense_head.project(tokens, g).float()  # 1×E×g×g
            maps[stage] = cosine(projected.flatten(2).transpose(1, 2))
        elif (mapped := net.clip.embed_patches(tokens)) is not None:
            maps[stage] = cosine(mapped)
    if output.prompts.dense is not None:
        maps["dense_prompt"] = output.prompts.dense.float()
    if "sparse_attention" in seen:
        attention = seen["sparse_attention"]  # 1×P×g²
        maps["sparse_attention"] = attention.reshape(1, attention.shape[1], g, g)
    maps["sam_logits"] = output.logits.float()
    return maps


def _prediction(sentence: str, logits: np.ndarray, threshold: float) -> Prediction:
    from rsrefseg.predict.predictor import Prediction

    tensor = torch.from_numpy(logits)
    return Prediction(
        sentence=sentence,
        probability=torch.sigmoid(tensor).numpy(),
        mask=(tensor > logit_threshold(threshold)).numpy(),
    )
