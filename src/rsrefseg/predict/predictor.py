"""Masks from a checkpoint for any image and sentence: the Python API behind ``rsrefseg-predict``.

    from rsrefseg.predict import Predictor

    predictor = Predictor.from_checkpoint("best.ckpt", device="cuda", precision="bf16")
    prediction = predictor.predict("scene.png", "the small gray vehicle left of the large building")
    prediction.mask          # H×W bool at the image's own size
    prediction.probability   # H×W float32 in [0, 1]

The image takes the evaluation path: resized so its long side is the model's input side S (aspect
kept), padded, the logits cropped to the content and resized back to the image's size
(:mod:`rsrefseg.evaluation.scoring`); a mask is exactly what ``rsrefseg-eval`` scores for that image.
Several sentences on one image run CLIP's and SAM's image encoders once for that image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from omegaconf import OmegaConf

from rsrefseg.data.transforms import ResizePad
from rsrefseg.errors import ConfigError
from rsrefseg.evaluation.scoring import logit_threshold, to_original_size
from rsrefseg.models import RSRefSeg2
from rsrefseg.models.rsrefseg2 import RSRefSeg2Output
from rsrefseg.predict.images import ImageInput, to_image_tensor
from rsrefseg.predict.sentences import as_sentence_list, clean_sentences
from rsrefseg.training.checkpoint_files import load_module, read_checkpoint
from rsrefseg.training.checkpointing import TRAINABLE

if TYPE_CHECKING:
    from rsrefseg.predict.explain import Explanation

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Prediction:
    """One sentence's answer on one image.

    Attributes:
        sentence: the expression as the model read it (whitespace normalised).
        probability: H×W float32 foreground probability at the image's own size.
        mask: H×W bool, ``probability > threshold`` (decided on the logits, as evaluation does).
    """

    sentence: str
    probability: np.ndarray
    mask: np.ndarray

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return tuple(self.mask.shape)


@dataclass
class CanvasBatch:
    """Images resized and padded to the model input, with what it takes to map results back.

    Attributes:
        images: N×3×S×S on the model's device.
        content_sizes: N (h, w) of each image's content in the canvas.
        image_sizes: N (H, W) original sizes.
    """

    images: torch.Tensor
    content_sizes: list[tuple[int, int]]
    image_sizes: list[tuple[int, int]]


class Predictor:
    """A trained RSRefSeg 2 network answering referring expressions on users' images.

    Args:
        net: the network (put in eval mode and moved to ``device`` here).
        input_size: S, the square model input the training data was resized and padded to.
        threshold: probability above which a pixel is foreground.
        device: ``cpu``, ``cuda``, ``cuda:1``, ….
        precision: ``fp32``; ``bf16`` (autocast, CPU or GPU) or ``fp16`` (autocast, CUDA only).
        collapse_spaces: collapse whitespace runs in sentences, as the training data did.
    """

    def __init__(
        self,
        net: RSRefSeg2,
        *,
        input_size: int,
        threshold: float = 0.5,
        device: str | torch.device = "cpu",
        precision: Precision = "fp32",
        collapse_spaces: bool = True,
    ) -> None:
        self.device = _check_device(device)
        self.precision = _check_precision(precision, self.device)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold={threshold!r}; expected a probability strictly between 0 and 1")
        self.net = net.eval().requires_grad_(False).to(self.device)
        self.resize_pad = ResizePad(size=int(input_size))
        self.threshold = float(threshold)
        self.collapse_spaces = collapse_spaces

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        precision: Precision = "fp32",
        threshold: float | None = None,
        overrides: Sequence[str] = (),
    ) -> Predictor:
        """Build the predictor of any checkpoint ``rsrefseg-eval`` accepts.

        Args:
            path: a ``rsrefseg-train`` checkpoint, a ``rsrefseg-export`` file, or a LoRA / frozen-mode
                checkpoint whose frozen backbone weights are read from the files its config names.
            device: where the network runs.
            precision: ``fp32`` | ``bf16`` | ``fp16`` (CUDA only).
            threshold: foreground probability; None = the checkpoint's ``metrics.threshold``.
            overrides: ``key=value`` dot-list changes to the stored config before the network is
                built, e.g. ``model.sam.sam.checkpoint=/data/sam_vit_h.pth`` where the backbone
                files now live elsewhere.

        Raises:
            FileNotFoundError: no checkpoint, or a backbone file the checkpoint needs is missing.
            ValueError: a corrupt file or another project's checkpoint.
        """
        checkpoint = read_checkpoint(path)
        config = checkpoint["rsrefseg_config"]
        if overrides:
            config = _with_overrides(config, overrides, source=path)
            checkpoint["rsrefseg_config"] = config
        try:
            module = load_module(checkpoint)
        except Exception as error:
            missing = _missing_file(error)
            if missing is None or checkpoint.get("rsrefseg_weights") != TRAINABLE:
                raise
            # the builder's first sentence names the file and its key; its advice is for training
            what = str(missing).split(". ")[0]
            raise FileNotFoundError(
                f"{path} holds the trained weights only (LoRA adapters, prompter, decoder); its frozen "
                f"backbone weights are read from the files its config names, and one is missing: {what}. "
                "Put the file there, re-point the config key (Predictor.from_checkpoint(..., overrides="
                "['<key>=<path>']) or rsrefseg-predict --set <key>=<path>), or run rsrefseg-export on a "
                "machine that has the files to get a self-contained checkpoint"
            ) from error
        data = config.get("data") or {}
        input_size = data.get("image_size") or config["model"]["sam"]["image_size"]
        if threshold is None:
            threshold = (config.get("metrics") or {}).get("threshold", 0.5)
        return cls(
            module.net,
            input_size=int(input_size),
            threshold=float(threshold),
            device=device,
            precision=precision,
            collapse_spaces=data.get("sentence_spaces", "collapse") != "keep",
        )

    @property
    def input_size(self) -> int:
        """S, the model's square input side."""
        return self.resize_pad.size

    # ------------------------------------------------------------------------------------------
    # predictions
    # ------------------------------------------------------------------------------------------

    def predict(self, image: ImageInput, sentences: str | Sequence[str]) -> Prediction | list[Prediction]:
        """One image and one sentence → a :class:`Prediction`; a list of sentences → a list.

        The image encoders run once however many sentences are given.
        """
        sentence_list, single = as_sentence_list(sentences)
        [predictions] = self.predict_many([(image, sentence_list)], batch_size=1)
        return predictions[0] if single else predictions

    def predict_many(
        self, pairs: Sequence[tuple[ImageInput, str | Sequence[str]]], *, batch_size: int = 8
    ) -> list[list[Prediction]]:
        """Several images, each with one or more sentences, batched ``batch_size`` images at a time.

        Returns:
            Per pair, one :class:`Prediction` per sentence, in order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected a positive integer")
        out: list[list[Prediction]] = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            images = [to_image_tensor(image, name=f"image {start + i}") for i, (image, _) in enumerate(chunk)]
            sentences = [self.clean(as_sentence_list(s)[0]) for _, s in chunk]
            out.extend(self.predict_tensors(images, sentences))
        return out

    def predict_tensors(
        self, images: Sequence[torch.Tensor], sentences: Sequence[Sequence[str]]
    ) -> list[list[Prediction]]:
        """The batched core: N images (3×H×W float in [0, 1]) with N lists of cleaned sentences."""
        canvas = self.canvas(images)
        flat = [s for group in sentences for s in group]
        index = [i for i, group in enumerate(sentences) for _ in group]
        output = self.forward(canvas, flat, index)
        maps = self.to_images(output.logits, canvas, index)
        cut = logit_threshold(self.threshold)
        predictions = [
            Prediction(
                sentence=sentence,
                probability=torch.sigmoid(logits[0]).numpy(),
                mask=(logits[0] > cut).numpy(),
            )
            for sentence, logits in zip(flat, maps, strict=True)
        ]
        grouped: list[list[Prediction]] = []
        for group in sentences:
            grouped.append(predictions[: len(group)])
            predictions = predictions[len(group) :]
        return grouped

    def probabilities(self, images: Sequence[np.ndarray], sentence: str) -> list[np.ndarray]:
        """Tiles of a large raster, one sentence → per tile an H×W float32 probability map.

        Args:
            images: H×W×3 float32 arrays in [0, 1] (e.g. GeoTIFF tiles after scaling).
            sentence: the expression, applied to every tile.
        """
        [text] = self.clean([sentence])
        tensors = [to_image_tensor(image, name=f"tile {i}") for i, image in enumerate(images)]
        return [group[0].probability for group in self.predict_tensors(tensors, [[text]] * len(tensors))]

    # ------------------------------------------------------------------------------------------
    # the steps, for explanations and benchmarks
    # ------------------------------------------------------------------------------------------

    def clean(self, sentences: Sequence[str]) -> list[str]:
        """Refuse empty sentences, warn on truncated ones, normalise whitespace."""
        clip = self.net.clip
        return clean_sentences(
            sentences,
            count_tokens=clip.count_tokens,
            context_length=clip.context_length,
            collapse_spaces=self.collapse_spaces,
        )

    def canvas(self, images: Sequence[torch.Tensor]) -> CanvasBatch:
        """Resize and pad images (3×H×W float in [0, 1]) to the model input, as evaluation does."""
        resized = [self.resize_pad.image(image) for image in images]
        return CanvasBatch(
            images=torch.stack([c for c, _ in resized]).to(self.device),
            content_sizes=[size for _, size in resized],
            image_sizes=[tuple(image.shape[-2:]) for image in images],
        )

    def forward(self, canvas: CanvasBatch, sentences: Sequence[str], index: Sequence[int]) -> RSRefSeg2Output:
        """The network on a canvas batch: sentence i reads image ``index[i]``; encoders once per image."""
        image_index = torch.as_tensor(list(index), dtype=torch.long, device=self.device)
        with torch.inference_mode(), self.autocast():
            return self.net(canvas.images, list(sentences), image_index)

    def to_images(self, maps: torch.Tensor, canvas: CanvasBatch, index: Sequence[int]) -> list[torch.Tensor]:
        """B×C×m×m maps over the canvas (row i about image ``index[i]``) → B C×H×W float32 on the CPU."""
        return to_original_size(
            maps.float().cpu(),
            canvas_size=self.input_size,
            content_sizes=[canvas.content_sizes[i] for i in index],
            output_sizes=[canvas.image_sizes[i] for i in index],
        )

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def explain(self, image: ImageInput, sentence: str) -> Explanation:
        """The intermediate maps of one sentence on one image: see :mod:`rsrefseg.predict.explain`."""
        from rsrefseg.predict.explain import explain

        return explain(self, image, sentence)


def _missing_file(error: BaseException) -> FileNotFoundError | None:
    """The FileNotFoundError behind ``error`` (Hydra wraps a builder's errors), or None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, FileNotFoundError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _check_device(device: str | torch.device) -> torch.device:
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(
            f"device={device!r} is not a torch device ({error}); use cpu, cuda or cuda:<n>"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available on this machine; use device='cpu'")
    return resolved


def _check_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {list(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision=fp16 runs on CUDA only; on the CPU use fp32 or bf16")
    return precision


def _with_overrides(
    config: dict[str, Any], overrides: Sequence[str], *, source: str | Path
) -> dict[str, Any]:
    """The stored run config with ``key=value`` dot-list overrides merged in (keys must exist)."""
    merged = OmegaConf.create(config)
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not key=value (e.g. model.sam.sam.checkpoint=/data/sam.pth)"
            )
        if OmegaConf.select(merged, key, default="__missing__") == "__missing__":
            raise ConfigError(f"override {item!r}: the config stored in {source} has no key {key!r}")
    merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_container(merged, resolve=False)
