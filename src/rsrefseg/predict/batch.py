"""Many (image, sentence) pairs through a predictor: batched, one failure never stops the others.

Pairs that name the same image are grouped, so that image is read and encoded once for all of its
sentences; ``batch_size`` images go through the network together. What can be wrong with one pair
— its image is missing or unreadable, its sentence is empty — fails that pair only: the reason goes
into the summary and the other pairs go on. A too-long sentence is predicted truncated, with a note.

Images are read as the datasets read them: pixels as stored in the file. A JPEG's EXIF orientation
tag is not applied (the training and evaluation data are read the same way), so the mask is
aligned with the stored pixels; a note in the summary says so, since a photo viewer that honours
the tag shows the image turned against the mask.

Outputs per pair, in the output folder (``<stem>`` is the pair's id made safe as a file name):

- ``<stem>_mask.png``: 8-bit, 0 background / 255 foreground, at the image's own size;
- ``<stem>_overlay.png``: the image with the mask's outline and the sentence (unless disabled);
- ``<stem>_probability.png``: 16-bit grey, probability × 65535 (when asked for);

and ``summary.csv`` / ``summary.json`` with one row per pair (:data:`SUMMARY_FIELDS`).
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from rsrefseg.io import atomic_open, atomic_write_json, atomic_write_text
from rsrefseg.predict.images import exif_orientation_note, to_image_tensor
from rsrefseg.predict.overlay import render_overlay, save_png
from rsrefseg.predict.pairs import Pair
from rsrefseg.predict.sentences import SentenceTruncatedWarning

if TYPE_CHECKING:
    from rsrefseg.predict.predictor import Prediction, Predictor

SUMMARY_FIELDS = (
    "id",
    "status",
    "reason",
    "image",
    "sentence",
    "source",
    "mask",
    "overlay",
    "probability",
    "height",
    "width",
    "foreground_pixels",
    "foreground_fraction",
    "seconds",
    "notes",
)
SUMMARY_FILES = ("summary.csv", "summary.json")
#: overlays of small images are magnified until their short side reaches this, for a readable banner
OVERLAY_MIN_SIDE = 256

#: called with a message for the user (a failed pair, a truncated sentence, an EXIF note)
Report = Callable[[str], None]


@dataclass(frozen=True)
class OutputOptions:
    """What to write per pair.

    Attributes:
        out_dir: The output folder.
        overlay: Write ``<stem>_overlay.png``.
        probability: Write ``<stem>_probability.png`` (16-bit).
    """

    out_dir: Path
    overlay: bool = True
    probability: bool = False

    def paths(self, pair: Pair) -> dict[str, Path]:
        """The files written for ``pair``, by kind (``mask``, ``overlay``, ``probability``)."""
        kinds = ["mask"] + ["overlay"] * self.overlay + ["probability"] * self.probability
        return {kind: self.out_dir / f"{pair.stem}_{kind}.png" for kind in kinds}

    def summary_paths(self) -> list[Path]:
        return [self.out_dir / name for name in SUMMARY_FILES]


@dataclass
class ItemResult:
    """One pair's row of the summary (see :data:`SUMMARY_FIELDS`)."""

    id: str
    image: str
    sentence: str
    source: str
    status: str = "failed"
    reason: str = ""
    mask: str = ""
    overlay: str = ""
    probability: str = ""
    height: int | None = None
    width: int | None = None
    foreground_pixels: int | None = None
    foreground_fraction: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def planned_outputs(pairs: Sequence[Pair], options: OutputOptions) -> list[Path]:
    """Every file a run over ``pairs`` writes, summary included."""
    return [path for pair in pairs for path in options.paths(pair).values()] + options.summary_paths()


def refuse_existing(paths: Sequence[Path], *, force: bool) -> None:
    """Check the planned outputs before anything runs.

    Raises:
        FileExistsError: naming the first that exists (unless ``force``), and how many do.
        IsADirectoryError: a planned file is a folder.
    """
    existing = [path for path in paths if path.exists() or path.is_symlink()]
    for path in existing:
        if path.is_dir():
            raise IsADirectoryError(f"output {path} is a folder; remove it or choose another --out")
    if existing and not force:
        others = f" (and {len(existing) - 1} more of the {len(paths)} outputs)" if len(existing) > 1 else ""
        raise FileExistsError(
            f"output {existing[0]} exists{others}; choose another --out folder, or pass --force to replace"
        )


def run_pairs(
    predictor: Predictor,
    pairs: Sequence[Pair],
    options: OutputOptions,
    *,
    batch_size: int = 8,
    force: bool = False,
    report: Report = print,
    progress: Callable[[int], None] | None = None,
) -> list[ItemResult]:
    """Predict every pair and write its files.

    Args:
        predictor: The model.
        pairs: What to predict (their ids must give distinct file names, see ``check_unique_ids``).
        options: What to write where.
        batch_size: Images per network call (each with all of its sentences).
        force: Replace existing files.
        report: Receives one line per failed pair and per note.
        progress: Called with the number of pairs just finished.

    Returns:
        One result per pair, in order. Errors that are not about one pair (the network, the output
        folder) propagate.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer")
    results = [
        ItemResult(id=p.id, image=str(p.image or ""), sentence=p.sentence, source=p.source) for p in pairs
    ]
    done = progress or (lambda count: None)

    def fail(index: int, reason: str) -> None:
        results[index].reason = reason
        report(f"{pairs[index].id} ({pairs[index].source}) failed: {reason}")
        done(1)

    groups: dict[Path, list[int]] = {}
    for index, pair in enumerate(pairs):
        if pair.image is None:
            fail(index, "no image given (empty image field)")
        else:
            groups.setdefault(pair.image, []).append(index)
    images = list(groups)
    for start in range(0, len(images), batch_size):
        _run_batch(
            predictor,
            pairs,
            results,
            {i: groups[i] for i in images[start : start + batch_size]},
            options,
            force=force,
            fail=fail,
            report=report,
            done=done,
        )
    return results


def _run_batch(
    predictor: Predictor,
    pairs: Sequence[Pair],
    results: list[ItemResult],
    groups: dict[Path, list[int]],
    options: OutputOptions,
    *,
    force: bool,
    fail: Callable[[int, str], None],
    report: Report,
    done: Callable[[int], None],
) -> None:
    tensors: list[torch.Tensor] = []
    sentences: list[list[str]] = []
    members: list[list[int]] = []
    for path, indices in groups.items():
        started = time.perf_counter()
        try:
            tensor = to_image_tensor(path, warn_exif=False)  # the summary carries the note instead
        except (FileNotFoundError, ValueError) as error:
            for index in indices:
                fail(index, str(error))
            continue
        note = exif_orientation_note(path)
        kept = []
        for index in indices:
            if note:
                results[index].notes.append(note)
                report(f"{pairs[index].id}: note: {note}")
            text = _clean(predictor, pairs[index].sentence, results[index], report)
            if text is None:
                fail(index, _empty_reason(pairs[index].sentence))
                continue
            kept.append((index, text))
        share = (time.perf_counter() - started) / max(len(kept), 1)
        if not kept:
            continue
        for index, _ in kept:
            results[index].seconds += share
        tensors.append(tensor)
        sentences.append([text for _, text in kept])
        members.append([index for index, _ in kept])
    if not tensors:
        return
    started = time.perf_counter()
    grouped = predictor.predict_tensors(tensors, sentences)
    share = (time.perf_counter() - started) / sum(len(s) for s in sentences)
    for tensor, indices, predictions in zip(tensors, members, grouped, strict=True):
        pixels = tensor.mul(255).round_().to(torch.uint8).permute(1, 2, 0).numpy()
        for index, prediction in zip(indices, predictions, strict=True):
            started = time.perf_counter()
            _write(results[index], pairs[index], prediction, pixels, options, force=force)
            results[index].seconds += share + time.perf_counter() - started
            done(1)


def _clean(predictor: Predictor, sentence: str, result: ItemResult, report: Report) -> str | None:
    """The sentence as the model reads it, None when empty; a truncation becomes a note."""
    if not sentence.strip():
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [text] = predictor.clean([sentence])
    for warning in caught:
        if issubclass(warning.category, SentenceTruncatedWarning):
            note = str(warning.message).replace("sentence 0 ", "the sentence ", 1)
            result.notes.append(note)
            report(f"{result.id}: warning: {note}")
        else:  # not ours to handle: give it back to the warnings machinery
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return text


def _empty_reason(sentence: str) -> str:
    return (
        f"empty sentence ({sentence!r}); give a referring expression such as "
        "'the small gray vehicle left of the large building'"
    )


def _write(
    result: ItemResult,
    pair: Pair,
    prediction: Prediction,
    pixels: np.ndarray,
    options: OutputOptions,
    *,
    force: bool,
) -> None:
    paths = options.paths(pair)
    mask = prediction.mask
    save_png(paths["mask"], mask, force=force)
    if "overlay" in paths:
        scale = max(1, min(8, -(-OVERLAY_MIN_SIDE // min(mask.shape))))
        save_png(
            paths["overlay"], render_overlay(pixels, mask, prediction.sentence, scale=scale), force=force
        )
    if "probability" in paths:
        write_probability_png(paths["probability"], prediction.probability, force=force)
    result.status = "ok"
    for kind, path in paths.items():
        setattr(result, kind, str(path))
    result.height, result.width = mask.shape
    result.foreground_pixels = int(mask.sum())
    result.foreground_fraction = float(mask.mean())


def write_probability_png(path: Path, probability: np.ndarray, *, force: bool = False) -> Path:
    """An H×W probability in [0, 1] as a 16-bit grey PNG (value = round(p × 65535)), atomically.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
    """
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    values = np.round(np.clip(probability, 0.0, 1.0) * 65535.0).astype(np.uint16)
    with atomic_open(path) as handle:
        Image.fromarray(values).save(handle, format="PNG")
    return path


def read_probability_png(path: str | Path) -> np.ndarray:
    """A probability PNG written by :func:`write_probability_png` → H×W float32 in [0, 1]."""
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.float32) / 65535.0


def write_summary(
    results: Sequence[ItemResult], options: OutputOptions, *, run: dict[str, Any], force: bool = False
) -> list[Path]:
    """``summary.csv`` (one row per pair) and ``summary.json`` (the rows, counts and run settings).

    Returns:
        The two paths.
    """
    csv_path, json_path = options.summary_paths()
    refuse_existing([csv_path, json_path], force=force)
    rows = [summary_row(result) for result in results]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "notes": " | ".join(row["notes"])})
    atomic_write_text(csv_path, buffer.getvalue())
    counts = {"ok": sum(r.ok for r in results), "failed": sum(not r.ok for r in results)}
    atomic_write_json(json_path, {"counts": counts, "run": run, "items": rows})
    return [csv_path, json_path]


def summary_row(result: ItemResult) -> dict[str, Any]:
    row = asdict(result)
    row["seconds"] = round(result.seconds, 4)
    return {name: row[name] for name in SUMMARY_FIELDS}
