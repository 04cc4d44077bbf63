"""Tiny copies of each dataset layout as downloaded, written by the tests into a temporary folder.

Each ``make_<layout>(root)`` writes a few 32–64 px images (some not square) with masks drawn by
numpy and encoded with PIL / pycocotools exactly as the real layout stores them (docs/data.md §2–§4), and
returns the ground truth it wrote, so tests can check what a reader yields against it.
``write_release_jsonl`` writes the authors' ``datainfo/<dataset>_<split>.jsonl`` the way their
converters do. The defect helpers break one file in a known way for ``rsrefseg-prepare`` tests.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# (H, W) cycled through the samples: non-square on purpose, for original-size evaluation tests
SIZES = [(48, 64), (64, 40), (56, 56), (32, 60), (64, 64)]
RRSISD_CATEGORIES = [
    "Expressway-Service-area",
    "Expressway-toll-station",
    "airplane",
    "airport",
    "baseballfield",
    "basketballcourt",
    "bridge",
    "chimney",
    "dam",
    "golffield",
    "groundtrackfield",
    "harbor",
    "overpass",
    "ship",
    "stadium",
    "storagetank",
    "tenniscourt",
    "trainstation",
    "vehicle",
    "windmill",
]
WORDS = ["red", "small", "large", "left", "right", "top", "bottom", "near", "the", "road"]


@dataclass(frozen=True)
class Truth:
    """What one written sample should read back as.

    Attributes:
        file_name: Image file name relative to the image folder.
        sentence: The expression (single spaces).
        mask: ``H×W`` bool ground truth.
        category: Category name, or None where the layout has none.
    """

    file_name: str
    sentence: str
    mask: np.ndarray = field(compare=False)
    category: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]


@dataclass
class LayoutFixture:
    """A written layout: its root and, per split, the samples in index order."""

    root: Path
    samples: dict[str, list[Truth]]


def _image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Smooth-ish random RGB (compresses predictably as JPEG)."""
    h, w = size
    base = rng.integers(40, 200, size=(1, 1, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = ((xx * 2 + yy) % 50)[..., None]
    return np.clip(base + ramp + rng.integers(0, 10, size=(h, w, 3)), 0, 255).astype(np.uint8)


def _mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """An ellipse or a rectangle well inside the image."""
    h, w = size
    cy, cx = int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 4, 3 * w // 4))
    ry, rx = int(rng.integers(4, h // 4 + 1)), int(rng.integers(4, w // 4 + 1))
    yy, xx = np.mgrid[0:h, 0:w]
    if rng.random() < 0.5:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)


def _sentence(rng: np.random.Generator, index: int) -> str:
    words = rng.choice(WORDS, size=4).tolist()
    return f"object {index} " + " ".join(words)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# --------------------------------------------------------------------------------------------------
# Phrase-file layouts
# --------------------------------------------------------------------------------------------------


def make_refsegrs(root: Path, *, counts: dict[str, int] | None = None, seed: int = 0) -> LayoutFixture:
    """RefSegRS: ``images/<id>.tif`` (RGB), ``masks/<id>.tif`` (0 / 255), ``output_phrase_<split>.txt``.

    Every image carries two expressions of the same mask (the same id on two lines), as in the
    real dataset; ids are 5-digit numbers.
    """
    counts = counts or {"train": 6, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[Truth]] = {}
    image_index = 0
    for split, count in counts.items():
        lines, truths = [], []
        for index in range(count):
            if index % 2 == 0:  # a new image every second line
                image_id = f"{10000 + image_index:05d}"
                size = SIZES[image_index % len(SIZES)]
                mask = _mask(rng, size)
                Image.fromarray(_image(rng, size)).save(root / "images" / f"{image_id}.tif")
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{image_id}.tif")
                image_index += 1
            sentence = _sentence(rng, index)
            lines.append(f"{image_id} {sentence}\n")
            truths.append(Truth(f"{image_id}.tif", sentence, mask))
        (root / f"output_phrase_{split}.txt").write_text("".join(lines))
        samples[split] = truths
    return LayoutFixture(root, samples)


def make_risbench(root: Path, *, counts: dict[str, int] | None = None, seed: int = 1) -> LayoutFixture:
    """RISBench: ``img_rgb/<split>_<image>_<obj>.png``, ``mask/<same>.png``, phrase lines WITH ``.png``."""
    counts = counts or {"train": 5, "val": 3, "test": 4}
    rng = np.random.default_rng(seed)
    (root / "img_rgb").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[Truth]] = {}
    for split, count in counts.items():
        lines, truths = [], []
        for index in range(count):
            name = f"{split}_{100 + index // 2}_{index % 2}.png"
            size = SIZES[index % len(SIZES)]
            mask = _mask(rng, size)
            Image.fromarray(_image(rng, size)).save(root / "img_rgb" / name)
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "mask" / name)
            sentence = f"The thing, positioned at the bottom-left of the image, number {index}."
            lines.append(f"{name} {sentence}\n")
            truths.append(Truth(name, sentence, mask))
        (root / f"output_phrase_{split}.txt").write_text("".join(lines))
        samples[split] = truths
    return LayoutFixture(root, samples)


# --------------------------------------------------------------------------------------------------
# RRSIS-D
# --------------------------------------------------------------------------------------------------


def make_rrsisd(root: Path, *, counts: dict[str, int] | None = None, seed: int = 2) -> LayoutFixture:
    """RRSIS-D: ``rrsisd/refs(unc).p``, ``rrsisd/instances.json``, ``images/rrsisd/JPEGImages/*.jpg``.

    Annotations spell the category ``categories_id``, give ``bbox`` as ``[x1, y1, x2, y2]``, an
    unreliable ``area``, and ``segmentation`` as a LIST of two RLEs (the top and bottom parts of
    the object) whose union is the mask. Refs of the splits are interleaved in the pickle.
    """
    counts = counts or {"train": 5, "val": 3, "test": 3}
    rng = np.random.default_rng(seed)
    image_dir = root / "images" / "rrsisd" / "JPEGImages"
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "rrsisd").mkdir(parents=True, exist_ok=True)
    order = [split for index in range(max(counts.values())) for split in counts if index < counts[split]]
    refs, images, annotations = [], [], []
    samples: dict[str, list[Truth]] = {split: [] for split in counts}
    for number, split in enumerate(order):
        image_id = 413 + 7 * number
        file_name = f"{image_id:05d}.jpg"
        size = SIZES[number % len(SIZES)]
        mask = _mask(rng, size)
        Image.fromarray(_image(rng, size)).save(image_dir / file_name, quality=95)
        rows = np.nonzero(mask.any(axis=1))[0]
        middle = (rows[0] + rows[-1] + 1) // 2
        top, bottom = mask.copy(), mask.copy()
        top[middle:], bottom[:middle] = False, False
        ys, xs = np.nonzero(mask)
        category_id = number % len(RRSISD_CATEGORIES)
        sentence = _sentence(rng, number)
        images.append({"file_name": file_name, "height": size[0], "width": size[1], "id": image_id})
        annotations.append(
            {
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
                "categories_id": category_id,
                "id": image_id,
                "image_id": image_id,
                "segmentation": [_rle(top), _rle(bottom)],
                "area": 279213,
            }
        )
        refs.append(
            {
                "image_id": image_id,
                "split": split,
                "sentences": [
                    {"tokens": sentence.split(), "raw": sentence, "sent_id": image_id, "sent": sentence}
                ],
                "file_name": file_name,
                "category_id": category_id,
                "ann_id": image_id,
                "sent_ids": [image_id],
                "ref_id": image_id,
            }
        )
        samples[split].append(Truth(file_name, sentence, mask, RRSISD_CATEGORIES[category_id]))
    categories = [{"name": name, "id": i} for i, name in enumerate(RRSISD_CATEGORIES)]
    with (root / "rrsisd" / "refs(unc).p").open("wb") as handle:
        pickle.dump(refs, handle)
    instances = {"images": images, "annotations": annotations, "categories": categories}
    (root / "rrsisd" / "instances.json").write_text(json.dumps(instances))
    return LayoutFixture(root, samples)


# --------------------------------------------------------------------------------------------------
# The authors' converted JSONL, as their tools_RSRefSeg2/data_tools converters write it
# --------------------------------------------------------------------------------------------------


def write_release_jsonl(fixture: LayoutFixture, dataset: str, out: Path) -> Path:
    """Write ``out/datainfo/<dataset>_<split>.jsonl`` the way the release's converters do.

    refsegrs / risbench: ``split, image_id, sent, file_name, segmentation`` with the RLE of the raw
    0 / 255 mask file. rrsisd: the annotation's fields copied (segmentation list, xyxy bbox,
    category id and name, ann id, area), in refs order.
    """
    folder = out / "datainfo"
    folder.mkdir(parents=True, exist_ok=True)
    root = fixture.root
    if dataset == "rrsisd":
        refs = pickle.loads((root / "rrsisd" / "refs(unc).p").read_bytes())
        instances = json.loads((root / "rrsisd" / "instances.json").read_text())
        anns = {a["id"]: a for a in instances["annotations"]}
        names = {c["id"]: c["name"] for c in instances["categories"]}
        by_split: dict[str, list[dict]] = {}
        for ref in refs:
            ann = anns[ref["ann_id"]]
            by_split.setdefault(ref["split"], []).append(
                {
                    "split": ref["split"],
                    "image_id": ref["image_id"],
                    "sent": ref["sentences"][0]["sent"],
                    "file_name": ref["file_name"],
                    "category_id": ref["category_id"],
                    "category_name": names[ref["category_id"]],
                    "ann_id": ref["ann_id"],
                    "bbox": ann["bbox"],
                    "segmentation": ann["segmentation"],
                    "area": ann["area"],
                }
            )
    else:
        mask_dir = {"refsegrs": "masks", "risbench": "mask"}[dataset]
        by_split = {}
        for split in fixture.samples:
            for line in (root / f"output_phrase_{split}.txt").read_text().splitlines():
                item = line.strip().split(" ")
                name = item[0]
                file_name = name + ".tif" if dataset == "refsegrs" else name
                raw = np.asarray(Image.open(root / mask_dir / file_name))
                rle = mask_utils.encode(np.asfortranarray(raw))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode("utf-8")}
                by_split.setdefault(split, []).append(
                    {
                        "split": split,
                        "image_id": name,
                        "sent": " ".join(item[1:]),
                        "file_name": file_name,
                        "segmentation": segmentation,
                    }
                )
    for split, entries in by_split.items():
        text = "".join(json.dumps(entry) + "\n" for entry in entries)
        (folder / f"{dataset}_{split}.jsonl").write_text(text)
    return folder


# --------------------------------------------------------------------------------------------------
# Defects, one file at a time
# --------------------------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    """Cut a file to its first 60 bytes: the header survives, the pixels do not."""
    path.write_bytes(path.read_bytes()[:60])


def write_mask(path: Path, values: np.ndarray) -> None:
    """Replace a mask image by ``values`` (uint8, any shape)."""
    Image.fromarray(values.astype(np.uint8)).save(path)


def make_release_size_quirk(
    fixture: LayoutFixture, file_name: str, *, height: int = 787, width: int = 800
) -> np.ndarray:
    """Turn one RRSIS-D fixture sample into the release's quirk: a ``height``×``width`` JPEG whose
    ``instances.json`` size and RLE say 800×800 (RMSIN issues #12, #27: 01072.jpg is 800 wide and
    787 tall, 00131.jpg 802 tall; a user also reports 801-wide ones).

    The JPEG is one flat colour (about 10 KB). Returns the 800×800 mask the annotation holds.
    """
    root = fixture.root
    Image.new("RGB", (width, height), (90, 120, 60)).save(
        root / "images" / "rrsisd" / "JPEGImages" / file_name
    )
    mask = np.zeros((800, 800), dtype=bool)
    mask[100:700, 200:600] = True
    path = root / "rrsisd" / "instances.json"
    instances = json.loads(path.read_text())
    (image,) = [img for img in instances["images"] if img["file_name"] == file_name]
    image["height"], image["width"] = 800, 800
    (ann,) = [ann for ann in instances["annotations"] if ann["image_id"] == image["id"]]
    ann["segmentation"] = [_rle(mask)]
    path.write_text(json.dumps(instances))
    return mask
