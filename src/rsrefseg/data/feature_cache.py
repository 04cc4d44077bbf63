"""Frozen backbone features on disk: CLIP's and SAM's image encodings of a dataset, computed once.

In ``finetune=frozen`` mode the two image encoders never change, so what they make of an image can
be computed once and read back for every epoch (``data=cached_features``): training then runs only
the text encoder, the prompter and SAM's prompt encoder and mask decoder. A cache is a folder:

    manifest.json             shapes, dtype, model fingerprint, encoder weight digest, data config,
                              per split the image keys (row order), each sample's row and id
    <split>/vision_tokens.npy V0, M×g²×C_v (M distinct images of the split)
    <split>/sam_features.npy  SAM 1: M×d×h×w image embeddings
    <split>/sam_stride{4,8,16}.npy
                              SAM 2.1: the image encoder's FPN levels (:class:`Sam2Levels`). Its
                              ``no_mem_embed`` and the decoder's ``conv_s0`` / ``conv_s1`` train
                              in frozen mode too, so they run at decode time, not here.

Arrays are ``.npy`` files (``numpy.load(mmap_mode="r")`` maps them), float16 or float32. The cache
is written into a temporary folder beside ``cache_dir`` and renamed into place at the end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from rsrefseg.data.datamodule import RefSegDataModule, collate_referring
from rsrefseg.errors import ConfigError, UserError
from rsrefseg.io import atomic_write_json
from rsrefseg.models.rsrefseg2 import ImageEncoding, RSRefSeg2
from rsrefseg.models.sam2_backbone import Sam2Levels
from rsrefseg.training.checkpointing import flatten_config

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
DTYPES = {"float16": np.float16, "float32": np.float32}
#: model keys that do not change what the image encoders compute: a cache serves any value of them
#: (the prompter is what ablations change; the others are training switches)
FINGERPRINT_EXCLUDED = (
    "prompter",
    "lora",
    "require_pretrained",
    "activation_checkpointing",
    "compile",
    "compile_mode",
)
#: the arrays of one split, by SAM family
SAM1_ARRAYS = ("vision_tokens", "sam_features")
SAM2_ARRAYS = ("vision_tokens", "sam_stride4", "sam_stride8", "sam_stride16")


class FeatureCacheError(UserError):
    """A feature cache that cannot serve this run (missing, stale, or refused); the message says why."""


# --------------------------------------------------------------------------------------------------
# What identifies the encoders
# --------------------------------------------------------------------------------------------------


def model_fingerprint(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved ``model`` node minus what the image encoders do not depend on (the prompter, …)."""
    fingerprint = copy.deepcopy(dict(model_config))
    for key in FINGERPRINT_EXCLUDED:
        fingerprint.pop(key, None)
    return fingerprint


def fingerprint_differences(cached: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``model.<key>: cache <value>, this run <value>`` for each key in which two fingerprints differ."""
    theirs, ours = flatten_config(cached, "model"), flatten_config(current, "model")
    absent = "(absent)"
    keys = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k, absent) != ours.get(k, absent))
    return [f"{k}: cache {theirs.get(k, absent)!r}, this run {ours.get(k, absent)!r}" for k in keys]


def image_encoders(net: RSRefSeg2) -> dict[str, nn.Module]:
    """The modules whose weights decide the cached features: CLIP's image tower, SAM's image encoder."""
    return {"clip.vision": net.clip.model.visual, "sam.image_encoder": net.sam.image_encoder}


def encoder_digest(net: RSRefSeg2) -> str:
    """SHA-256 of the image encoders' weights and buffers (names, shapes, dtypes, bytes).

    The config fingerprint names a pretrained file but not random-init weights, which follow the
    seed; this digest tells both apart.
    """
    digest = hashlib.sha256()
    for part, module in image_encoders(net).items():
        tensors = [*module.named_parameters(), *module.named_buffers()]
        for name, tensor in sorted(tensors, key=lambda item: item[0]):
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{part}.{name}:{tuple(data.shape)}:{data.dtype};".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def uses_sam2_levels(net: RSRefSeg2) -> bool:
    """Whether SAM is SAM 2.1 (cached as :class:`Sam2Levels`) rather than SAM 1 (one embedding)."""
    return hasattr(net.sam, "encode_levels")


def encode_arrays(net: RSRefSeg2, images: Tensor) -> dict[str, Tensor]:
    """What the cache stores for N images (N×3×S×S in [0, 1]), by array name."""
    arrays = {"vision_tokens": net.clip.encode_image(images)}
    if uses_sam2_levels(net):
        levels = net.sam.encode_levels(images)
        arrays.update(sam_stride4=levels.stride4, sam_stride8=levels.stride8, sam_stride16=levels.stride16)
    else:
        arrays["sam_features"] = net.sam.encode_image(images)
    return arrays


def encoding_from_arrays(arrays: Mapping[str, Tensor]) -> ImageEncoding:
    """An :class:`ImageEncoding` of cached rows (SAM 2's levels are finished by ``Sam2Backbone.decode``)."""
    if "sam_features" in arrays:
        sam: Tensor | Sam2Levels = arrays["sam_features"]
    else:
        sam = Sam2Levels(
            stride4=arrays["sam_stride4"], stride8=arrays["sam_stride8"], stride16=arrays["sam_stride16"]
        )
    return ImageEncoding(vision_tokens=arrays["vision_tokens"], sam_features=sam)


# --------------------------------------------------------------------------------------------------
# Reading a cache
# --------------------------------------------------------------------------------------------------


class FeatureCache:
    """A written cache: its manifest, and its arrays mapped on first use (in each worker process).

    Args:
        cache_dir: the folder ``rsrefseg-features`` wrote.

    Raises:
        FeatureCacheError: no manifest, a manifest of another format, or a listed array file missing.
    """

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.cache_dir = Path(cache_dir)
        path = self.cache_dir / MANIFEST
        if not path.is_file():
            where = "the folder does not exist" if not self.cache_dir.exists() else f"no {MANIFEST} in it"
            raise FeatureCacheError(
                f"data.cache_dir={str(self.cache_dir)!r} is not a feature cache ({where}); write one with "
                f"rsrefseg-features model.finetune=frozen cache_dir={self.cache_dir} [data=… model/…=…]"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise FeatureCacheError(f"{path} is not valid JSON ({error}); rewrite the cache") from error
        if self.manifest.get("format") != FORMAT:
            raise FeatureCacheError(
                f"{path} has format {self.manifest.get('format')!r}, this version reads {FORMAT}; rewrite it"
            )
        for split, entry in self.manifest["splits"].items():
            for name, array in entry["arrays"].items():
                file = self.cache_dir / array["file"]
                if not file.is_file():
                    raise FeatureCacheError(
                        f"{file} is missing ({split} {name} of the cache {self.cache_dir}); rewrite the "
                        "cache with rsrefseg-features … force=true"
                    )
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        # memory maps are reopened in each worker process rather than pickled
        return {**self.__dict__, "_arrays": {}}

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, split: str) -> dict[str, Any]:
        """The manifest entry of ``split`` (``rows``, ``sample_ids``, ``image_keys``, ``arrays``)."""
        if split not in self.manifest["splits"]:
            raise FeatureCacheError(
                f"the feature cache {self.cache_dir} holds no '{split}' split (it has {self.splits}); "
                f"write it with rsrefseg-features … splits=[{split}] force=true"
            )
        return self.manifest["splits"][split]

    def array(self, split: str, name: str) -> np.ndarray:
        """One array of a split, memory-mapped read-only."""
        key = (split, name)
        if key not in self._arrays:
            self._arrays[key] = np.load(
                self.cache_dir / self.split(split)["arrays"][name]["file"], mmap_mode="r"
            )
        return self._arrays[key]

    def read(self, split: str, rows: Sequence[int]) -> ImageEncoding:
        """The encodings of ``rows`` (ascending reads fastest), as float32 tensors."""
        index = np.asarray(rows, dtype=np.int64)
        arrays = {
            name: torch.from_numpy(np.ascontiguousarray(self.array(split, name)[index])).float()
            for name in self.split(split)["arrays"]
        }
        return encoding_from_arrays(arrays)

    def check_network(self, net: RSRefSeg2, model_config: Mapping[str, Any] | None) -> None:
        """Refuse to feed ``net`` features its image encoders would not compute.

        Raises:
            FeatureCacheError: the run is not in frozen mode; its model config differs from the
                cache's (the differing keys named); or its encoder weights differ (another seed or file).
        """
        if model_config is None:
            raise FeatureCacheError(
                "data=cached_features cannot check the cache against this run's model: the module carries "
                "no run config (build it with rsrefseg.config.build.build_module(..., run_config=…))"
            )
        finetune = model_config.get("finetune")
        if finetune != "frozen":
            raise FeatureCacheError(
                f"data=cached_features needs model.finetune=frozen, got {finetune!r}: in full / lora mode "
                "the image encoders train, and cached features would be stale"
            )
        differences = fingerprint_differences(self.manifest["model"], model_fingerprint(model_config))
        if differences:
            shown = differences[:8] + ([f"… (+{len(differences) - 8} more)"] if len(differences) > 8 else [])
            raise FeatureCacheError(
                f"the feature cache {self.cache_dir} was written for another model: {'; '.join(shown)}. "
                "Train with the cache's model settings, or rewrite the cache for these "
                "(rsrefseg-features … force=true)"
            )
        digest = encoder_digest(net)
        if digest != self.manifest["encoder_digest"]:
            raise FeatureCacheError(
                f"the feature cache {self.cache_dir} was written with other image-encoder weights (digest "
                f"{self.manifest['encoder_digest'][:12]}…, this run {digest[:12]}…): random-init encoders "
                f"follow the seed (the cache used seed={self.manifest.get('seed')}), pretrained ones their "
                "file. Use the cache's seed and weights, or rewrite the cache "
                "(rsrefseg-features … force=true)"
            )


# --------------------------------------------------------------------------------------------------
# Writing a cache
# --------------------------------------------------------------------------------------------------


def check_can_cache(model_config: Mapping[str, Any], data_config: Mapping[str, Any]) -> None:
    """Refuse a composition whose features a cache cannot stand in for.

    Raises:
        ConfigError: ``model.finetune`` is not ``frozen``; random augmentation is on (``data.hflip_p``);
            the data config is itself a cache.
    """
    finetune = model_config.get("finetune")
    if finetune != "frozen":
        raise ConfigError(
            f"model.finetune={finetune!r}: cached features need model.finetune=frozen (in full / lora mode "
            "the image encoders train, so features computed once would be stale); add model.finetune=frozen"
        )
    if "cache_dir" in data_config:
        raise ConfigError(
            "data=cached_features is already a cache: compose the dataset to cache (data=rrsisd, "
            "data=synthetic, …) and train from it with data=cached_features data.cache_dir=…"
        )
    hflip = float(data_config.get("hflip_p") or 0.0)
    if hflip > 0:
        raise ConfigError(
            f"data.hflip_p={hflip}: a cache holds one encoding per image, so random flips cannot be cached; "
            "set data.hflip_p=0"
        )


def stochastic_layers(net: RSRefSeg2) -> list[str]:
    """Dropout / drop-path layers with a nonzero rate in the image encoders (they act in train mode only)."""
    found = []
    for part, module in image_encoders(net).items():
        for name, layer in module.named_modules():
            rate = (
                getattr(layer, "p", None)
                if isinstance(layer, nn.Dropout)
                else getattr(layer, "drop_prob", None)
            )
            if isinstance(rate, float) and rate > 0:
                found.append(f"{part}.{name} ({rate})")
    return found


def random_transforms(dataset: Dataset) -> list[Any]:
    """The random augmentations (a ``p`` > 0) in a dataset's transform chain, if it has one."""
    transform = getattr(dataset, "transform", None)
    parts = getattr(transform, "transforms", [transform] if transform is not None else [])
    return [t for t in parts if float(getattr(t, "p", 0.0) or 0.0) > 0.0]


def image_rows(dataset: Dataset) -> tuple[list[str], list[int], list[int]]:
    """Deduplicate a split by image: (image keys in row order, each sample's row, first sample of each row).

    Samples share a row when the dataset's ``image_keys()`` gives them equal keys (several
    sentences of one image file); a dataset without ``image_keys`` has one image per sample.
    """
    size = len(dataset)  # type: ignore[arg-type]
    keys_of = getattr(dataset, "image_keys", None)
    keys = keys_of() if keys_of is not None else None
    if keys is None:
        return [f"#{i}" for i in range(size)], list(range(size)), list(range(size))
    row_of: dict[str, int] = {}
    rows, firsts = [], []
    for index, key in enumerate(keys):
        key = str(key)
        if key not in row_of:
            row_of[key] = len(row_of)
            firsts.append(index)
        rows.append(row_of[key])
    return list(row_of), rows, firsts


def write_feature_cache(
    net: RSRefSeg2,
    datamodule: RefSegDataModule,
    *,
    cache_dir: str | os.PathLike[str],
    splits: Sequence[str] | None,
    dtype: str,
    batch_size: int,
    device: torch.device,
    model_config: Mapping[str, Any],
    data_config: Mapping[str, Any],
    seed: int,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Encode each split's distinct images once and write the cache; returns its manifest.

    Args:
        net: the network (frozen mode), its encoders as training will build them (same seed / files).
        datamodule: the composed data; each split's items are read with its own transform, which
            must not be random.
        cache_dir: the folder to create (refused when it exists and is not empty, unless ``force``).
        splits: the splits to cache; None: every configured one.
        dtype: ``float16`` | ``float32``, how arrays are stored.
        batch_size: images per encoder call.
        device: where the encoders run.
        model_config, data_config: the resolved ``model`` and ``data`` nodes (kept in the manifest).
        seed: the run seed the encoders were built under (named when a run's weights differ).
        force: replace an existing cache.
        progress: called with a line per split.

    Raises:
        ConfigError: not frozen mode, random augmentation, an unknown dtype or split.
        FeatureCacheError: ``cache_dir`` exists and ``force`` is false.
    """
    check_can_cache(model_config, data_config)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: expected a positive integer (images per encoder call)")
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and (not cache_dir.is_dir() or any(cache_dir.iterdir())) and not force:
        raise FeatureCacheError(
            f"cache_dir={str(cache_dir)!r} exists and is not empty; add force=true to replace it"
        )
    wanted = list(splits) if splits is not None else list(datamodule.split_factories)
    unknown = [s for s in wanted if s not in datamodule.split_factories]
    if unknown:
        raise ConfigError(
            f"splits={wanted}: {unknown} not configured in this data config "
            f"(it has {sorted(datamodule.split_factories)})"
        )
    say = progress or log.info
    noisy = stochastic_layers(net)
    if noisy:
        log.warning(
            "the image encoders have stochastic layers active in training (%s): the cache holds their "
            "eval-mode output, so training from it skips that noise",
            ", ".join(noisy[:4]),
        )
    net = net.to(device).eval()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dtype": dtype,
        "sam": "sam2_levels" if uses_sam2_levels(net) else "sam",
        "model": model_fingerprint(model_config),
        "encoder_digest": encoder_digest(net),
        "seed": int(seed),
        "data": dict(data_config),
        "splits": {},
    }
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.partial-", dir=cache_dir.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's folder is private; the cache is not
        for split in wanted:
            dataset = datamodule.dataset(split)
            randomness = random_transforms(dataset)
            if randomness:
                raise ConfigError(
                    f"the '{split}' split's transform is random ({randomness}); a cache holds one encoding "
                    "per image: turn the augmentation off (data.hflip_p=0)"
                )
            started = time.perf_counter()
            entry = _write_split(
                net,
                dataset,
                staging,
                split,
                dtype=DTYPES[dtype],
                batch_size=batch_size,
                device=device,
                num_workers=datamodule.num_workers,
            )
            manifest["splits"][split] = entry
            size = sum(a["bytes"] for a in entry["arrays"].values())
            say(
                f"{split}: {entry['images']} images ({entry['samples']} samples) → {format_bytes(size)} "
                f"in {time.perf_counter() - started:.1f} s"
            )
        manifest["bytes"] = sum(
            a["bytes"] for entry in manifest["splits"].values() for a in entry["arrays"].values()
        )
        atomic_write_json(staging / MANIFEST, manifest)
        _move_into_place(staging, cache_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_split(
    net: RSRefSeg2,
    dataset: Dataset,
    folder: Path,
    split: str,
    *,
    dtype: type[np.floating],
    batch_size: int,
    device: torch.device,
    num_workers: int,
) -> dict[str, Any]:
    keys, rows, firsts = image_rows(dataset)
    records = getattr(dataset, "records", None)
    sample_ids: list[str | None] = (
        [str(r.sample_id) for r in records] if records is not None else [None] * len(rows)
    )
    loader = DataLoader(
        Subset(dataset, firsts), batch_size=batch_size, num_workers=num_workers, collate_fn=collate_referring
    )
    (folder / split).mkdir()
    arrays: dict[str, np.ndarray] = {}
    row = 0
    with torch.inference_mode():
        for batch in loader:
            encoded = encode_arrays(net, batch["image"].to(device))
            count = batch["image"].shape[0]
            for name, tensor in encoded.items():
                if name not in arrays:
                    arrays[name] = np.lib.format.open_memmap(
                        folder / split / f"{name}.npy",
                        mode="w+",
                        dtype=dtype,
                        shape=(len(keys), *tensor.shape[1:]),
                    )
                arrays[name][row : row + count] = tensor.float().cpu().numpy().astype(dtype)
            if records is None:
                for offset, sample_id in enumerate(batch["sample_id"]):
                    sample_ids[firsts[row + offset]] = str(sample_id)
            row += count
    entry: dict[str, Any] = {
        "samples": len(rows),
        "images": len(keys),
        "arrays": {},
        "image_keys": keys,
        "rows": rows,
        "sample_ids": sample_ids if all(s is not None for s in sample_ids) else None,
    }
    for name, array in arrays.items():
        array.flush()
        path = folder / split / f"{name}.npy"
        entry["arrays"][name] = {
            "file": f"{split}/{name}.npy",
            "shape": list(array.shape),
            "dtype": np.dtype(dtype).name,
            "bytes": path.stat().st_size,
        }
        del array
    return entry


def _move_into_place(staging: Path, cache_dir: Path) -> None:
    """Rename the finished cache over ``cache_dir``; an old cache there goes only after that."""
    old = None
    if cache_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.old-", dir=cache_dir.parent))
        os.replace(cache_dir, old / cache_dir.name)
    os.replace(staging, cache_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


def format_bytes(size: float) -> str:
    """``123.4 MB`` / ``1.23 GB`` (decimal units, as ``du --si``)."""
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def summary_lines(manifest: Mapping[str, Any], cache_dir: str | os.PathLike[str]) -> Iterable[str]:
    """What ``rsrefseg-features`` prints: the total size, then one line per split and array."""
    yield f"feature cache {cache_dir}: {format_bytes(manifest['bytes'])} ({manifest['dtype']})"
    for split, entry in manifest["splits"].items():
        shapes = ", ".join(f"{name} {tuple(a['shape'])}" for name, a in entry["arrays"].items())
        size = sum(a["bytes"] for a in entry["arrays"].values())
        counts = f"{entry['images']} images, {entry['samples']} samples"
        yield f"  {split}: {counts}, {format_bytes(size)}: {shapes}"
