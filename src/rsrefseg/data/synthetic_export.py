"""The synthetic benchmark on disk (``rsrefseg-synthetic``): compose its generator, check, write.

The generator is the ``data.generator`` node of ``conf/data/synthetic.yaml``, composed as
``rsrefseg-train`` composes it, so with the same seed sample i of a split on disk is sample i of
that split on the fly. Writes ``<out>/images/synthetic-<split>-<index:06d>.png``,
``<out>/<split>.jsonl`` (after all of that split's images) and ``<out>/synthetic_export.json``
(per split: its size and the generator settings that made it), each file atomically; never over
existing files without ``force``, never into an ``<out>/images`` that is a link.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rsrefseg.data.synthetic import SPLITS, export_unified_jsonl
from rsrefseg.errors import ConfigError
from rsrefseg.io import atomic_write_json

MANIFEST_NAME = "synthetic_export.json"
IMAGE_DIR = "images"
_CLASHES_SHOWN = 5


class ExportError(ConfigError):
    """The export cannot run as asked: a bad setting, or an output that would replace a file."""


def compose_generator(*, seed: int | None, overrides: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
    """The ``data.generator`` of ``data=synthetic`` as training composes it, and its resolved settings.

    Raises:
        ExportError: When the overrides do not compose or the generator rejects its settings.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    from rsrefseg.config.build import CONFIG_DIR

    extra = [] if seed is None else [f"data.generator.seed={seed}"]
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=["data=synthetic", *overrides, *extra])
        node = cfg.data.get("generator")
        if node is None:
            raise ExportError("the composed data config has no 'generator' node; it is not data=synthetic")
        settings = OmegaConf.to_container(node, resolve=True)
        generator = instantiate(settings)
    except (HydraException, ValueError, TypeError) as err:
        raise ExportError(f"data.generator (overrides {list(overrides) + extra}): {err}") from err
    return generator, {k: v for k, v in settings.items() if k != "_target_"}


def planned_paths(out: Path, sizes: Mapping[str, int]) -> list[Path]:
    """Every file an export of ``sizes`` into ``out`` writes, the manifest aside.

    The image names are the samples' ids (``SyntheticSample.sample_id``), as `export_unified_jsonl`
    names them; a test holds the two together.
    """
    paths = []
    for split, size in sizes.items():
        paths += [out / IMAGE_DIR / f"synthetic-{split}-{index:06d}.png" for index in range(size)]
        paths.append(out / f"{split}.jsonl")
    return paths


def check_outputs(out: Path, sizes: Mapping[str, int], *, force: bool) -> None:
    """Refuse to write into a link, over a file, or (without ``force``) over existing outputs.

    Raises:
        ExportError: Naming the output folder problem or the first files that exist.
    """
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    images = out / IMAGE_DIR
    if images.is_symlink() or (images.exists() and not images.is_dir()):
        # e.g. rsrefseg-prepare's output, whose images/ links to a downloaded dataset
        raise ExportError(f"{images} is a link or a file, not a folder of its own; choose another --out")
    if force:
        return
    existing = [path for path in planned_paths(out, sizes) if path.exists()]
    if existing:
        shown = ", ".join(str(p) for p in existing[:_CLASHES_SHOWN])
        more = f" and {len(existing) - _CLASHES_SHOWN} more" if len(existing) > _CLASHES_SHOWN else ""
        raise ExportError(
            f"refusing to replace {len(existing)} existing file(s) (use --force): {shown}{more}"
        )


def merged_manifest(
    out: Path, sizes: Mapping[str, int], generator: Mapping[str, Any], *, force: bool
) -> dict:
    """The manifest after this export: earlier splits kept, this export's splits (re)described.

    Raises:
        ExportError: When an existing manifest cannot be read (without ``force``).
    """
    path = out / MANIFEST_NAME
    splits: dict[str, Any] = {}
    if path.exists():
        try:
            splits = dict(json.loads(path.read_text(encoding="utf-8"))["splits"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            if not force:
                raise ExportError(f"{path} is not a readable export manifest ({err}); use --force") from err
    for split, size in sizes.items():
        splits[split] = {"size": size, "generator": dict(generator)}
    return {"splits": {split: splits[split] for split in SPLITS if split in splits}}


def export(
    *,
    out: str | Path,
    sizes: Mapping[str, int],
    seed: int | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
) -> dict[str, Path]:
    """Compose the generator, check the outputs, write the splits and the manifest.

    Args:
        out: Output folder (created if missing).
        sizes: Samples per split; sample indices run from 0.
        seed: The generator seed; None keeps the config's (``data.generator.seed``).
        overrides: Hydra overrides of the composed config, e.g. ``data.image_size=128``.
        force: Replace existing outputs.

    Returns:
        The JSONL path of each split written.

    Raises:
        ExportError: On a bad setting or an output that would be replaced without ``force``.
    """
    bad = {split: size for split, size in sizes.items() if split not in SPLITS or size < 1}
    if bad or not sizes:
        raise ExportError(f"sizes {dict(sizes)}: expected a positive sample count for some of {SPLITS}")
    out = Path(out).expanduser().resolve()
    generator, settings = compose_generator(seed=seed, overrides=overrides)
    check_outputs(out, sizes, force=force)
    manifest = merged_manifest(out, sizes, settings, force=force)
    written = export_unified_jsonl(generator, split_sizes=dict(sizes), out_dir=out)
    atomic_write_json(out / MANIFEST_NAME, manifest)
    return written
