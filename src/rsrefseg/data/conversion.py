"""Converting a downloaded dataset to the unified JSONL (``rsrefseg-prepare``): check, then write.

The layout is a ``conf/data`` option composed with Hydra's compose API; every image and mask is
checked (:mod:`rsrefseg.data.inspection`); ``<out>/<split>.jsonl``, ``<out>/images`` (a link to the
download's image folder) and ``<out>/prepare_report.json`` are written atomically, never over a
different existing file without ``force`` (identical content is left as it is; a report of a failed
run may always be replaced).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rsrefseg.data.file_check import SIZE_MISMATCH_POLICIES
from rsrefseg.data.inspection import (
    REPORT_NAME,
    Defect,
    PrepareReport,
    inspect_split,
)
from rsrefseg.data.records import (
    SPLITS,
    ReferringRecord,
    is_listed,
    parent_state,
    partition_known_bad,
)
from rsrefseg.io import atomic_open

IMAGE_LINK = "images"


class PrepareError(Exception):
    """The dataset's index cannot be read, or an output would overwrite a different file."""


class OverwriteRefused(PrepareError):
    """An output would replace a different existing file; carries the report of the checks that ran.

    Attributes:
        report: What the checks found (nothing was written).
    """

    def __init__(self, message: str, report: PrepareReport) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


def compose_data_config(layout: str, root: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The ``data`` node of ``conf/data/<layout>.yaml`` with ``root`` set, as training would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    from rsrefseg.config.build import CONFIG_DIR

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"data={layout}", *overrides])
    except MissingConfigException as err:
        options = sorted(p.stem for p in Path(CONFIG_DIR, "data").glob("*.yaml"))
        raise PrepareError(
            f"--layout {layout!r} is not a data config; options in {CONFIG_DIR}/data: {options}"
        ) from err
    data = cfg.data
    for key in ("reader", "root"):
        if key not in data:
            raise PrepareError(f"data={layout} has no '{key}' node; it is not an on-disk dataset config")
    # set after composing: a path may hold characters Hydra's override grammar rejects
    data.root = str(Path(root).expanduser().resolve())
    return data


def prepare(
    *,
    layout: str,
    root: str | Path,
    out: str | Path,
    splits: Sequence[str] = SPLITS,
    overrides: Sequence[str] = (),
    force: bool = False,
    strict: bool = False,
    workers: int = 0,
    link_images: bool = True,
) -> PrepareReport:
    """Check a dataset and, when it passes, write its unified JSONL.

    Args:
        layout: A ``conf/data`` option with a ``reader`` node (refsegrs, rrsisd, risbench, jsonl).
        root: The downloaded dataset's folder (sets ``data.root``).
        out: Output folder.
        splits: Splits to check and convert.
        overrides: Hydra overrides of the composed config (``data.reader.image_dir=…``).
        force: Replace existing outputs whose content differs.
        strict: Treat warnings as errors (nothing but the report is written).
        workers: Processes decoding images and masks (0: this process).
        link_images: Make ``<out>/images`` a link to the image folder, so that ``data=jsonl
            data.root=<out>`` finds the images without setting ``data.image_dir``.

    Returns:
        The report; ``report.ok(strict=strict)`` says whether the JSONL was written.

    Raises:
        PrepareError: If the index cannot be read, or an output differs from an existing file and
            ``force`` is False.
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise PrepareError(f"unknown split(s) {unknown}; expected names among {SPLITS}")
    data = compose_data_config(layout, root, overrides)
    reader_cfg = OmegaConf.to_container(data.reader, resolve=True)
    reader_root = Path(str(reader_cfg.get("root", data.root))).expanduser()
    if not reader_root.is_dir():
        # the reader would say "set data.root", which is how training is pointed at data, not prepare
        raise PrepareError(
            f"{data.get('name', layout)} root folder not found: {reader_root}{parent_state(reader_root)}; "
            "pass the downloaded dataset's folder as --root"
        )
    reader = _instantiate_reader(data)
    # the known-bad list and data.skip_samples are applied here, so that the report can count them
    skip_files = [str(name) for key in ("skip_files", "skip_samples") for name in reader_cfg.get(key) or []]
    resolved = OmegaConf.to_container(data, resolve=True)
    expected = resolved.get("expected_counts") or {}
    size_mismatch = str(resolved.get("size_mismatch", "error"))
    if size_mismatch not in SIZE_MISMATCH_POLICIES:
        choices = list(SIZE_MISMATCH_POLICIES)
        raise PrepareError(f"data.size_mismatch={size_mismatch!r}; expected one of {choices}")
    out = Path(out).expanduser().resolve()
    report = PrepareReport(layout=layout, root=str(data.root), out=str(out), size_mismatch=size_mismatch)

    lines_by_split: dict[str, list[dict[str, Any]]] = {}
    image_roots: set[Path] = set()
    categories: set[str] = set()
    found_bad: set[str] = set()
    for split in splits:
        try:
            listed = reader(split=split, skip_files=(), skip_samples=(), check_sentences=False)
        except (FileNotFoundError, KeyError, ValueError) as err:
            raise PrepareError(f"cannot read the {split} index of {layout} under {data.root}: {err}") from err
        kept, skipped = partition_known_bad(listed, skip_files)
        found_bad.update(name for name in skip_files if any(is_listed(r, frozenset([name])) for r in skipped))
        expected_count = expected.get(split)
        inspection = inspect_split(kept, split=split, workers=workers, size_mismatch=size_mismatch)
        report.splits[split] = {
            "listed": len(listed),
            "skipped_known_bad": len(skipped),
            "skipped_size_mismatch": len(inspection.size_skipped),
            "kept": len(kept) - len(inspection.size_skipped),
            "expected": expected_count,
        }
        report.skipped_size_mismatch[split] = inspection.size_skipped
        report.skipped_known_bad[split] = sorted({Path(r.file_name).name for r in skipped})
        if expected_count is not None and len(listed) != expected_count:
            report.defects.append(
                Defect(
                    "count_mismatch",
                    split,
                    f"the {split} index lists {len(listed)} samples; {expected_count} expected "
                    f"(data.expected_counts.{split})",
                )
            )
        report.defects.extend(inspection.defects)
        lines_by_split[split] = inspection.lines
        left_out = set(inspection.size_skipped)
        image_roots.update(r.image_root for r in kept)
        categories.update(r.category for r in kept if r.category is not None and r.sample_id not in left_out)
    report.known_bad_not_found = sorted(set(skip_files) - found_bad)
    report.categories = sorted(categories)
    if len(image_roots) > 1:
        raise PrepareError(
            f"records point at several image folders {sorted(map(str, image_roots))}; expected one"
        )
    report.image_dir = str(next(iter(image_roots))) if image_roots else None

    ok = report.ok(strict=strict)
    outputs: dict[Path, bytes] = {}
    if ok:
        for split, lines in lines_by_split.items():
            outputs[out / f"{split}.jsonl"] = "".join(json.dumps(line) + "\n" for line in lines).encode(
                "utf-8"
            )
    report_path = out / REPORT_NAME
    outputs[report_path] = (
        json.dumps(report.as_dict(strict=strict), indent=2, ensure_ascii=False) + "\n"
    ).encode()
    link = out / IMAGE_LINK if link_images and ok and report.image_dir else None
    clashes = _clashes(outputs, link, report.image_dir, report_path=report_path, force=force)
    if clashes:
        raise OverwriteRefused(
            "refusing to replace existing output(s) that differ (use --force): " + "; ".join(clashes), report
        )
    for path, payload in outputs.items():
        if not (path.is_file() and path.read_bytes() == payload):  # identical files are left untouched
            with atomic_open(path) as handle:
                handle.write(payload)
        report.written.append(str(path))
    if link is not None:
        _link(link, Path(report.image_dir))  # type: ignore[arg-type]
        report.written.append(str(link))
    return report


def _instantiate_reader(data: DictConfig) -> Callable[..., list[ReferringRecord]]:
    from hydra.utils import instantiate

    reader = instantiate(OmegaConf.to_container(data.reader, resolve=True))
    if not callable(reader):
        raise PrepareError(f"data.reader instantiated to {reader!r}; expected a reader (set _partial_: true)")
    return reader


def _clashes(
    outputs: Mapping[Path, bytes], link: Path | None, image_dir: str | None, *, report_path: Path, force: bool
) -> list[str]:
    """The outputs that would replace something different, checked before anything is written."""
    clashes = []
    if link is not None and (link.exists() or link.is_symlink()):
        if not link.is_symlink():
            # a real folder is never replaced, not even with --force: it may hold the only copy of data
            clashes.append(f"{link} is a real folder or file, not a link; move it away")
        elif not force and Path(os.readlink(link)) != Path(image_dir or ""):
            clashes.append(f"{link} links to {os.readlink(link)}, not to {image_dir}")
    if force:
        return clashes
    for path, payload in outputs.items():
        if not path.exists() or (path.is_file() and path.read_bytes() == payload):
            continue
        if path == report_path and path.is_file() and not _report_was_ok(path):
            continue  # a failed run's report describes nothing on disk: replace it freely
        clashes.append(f"{path} differs")
    return clashes


def _report_was_ok(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("ok"))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (a temporary link renamed over it)."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp-link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)
