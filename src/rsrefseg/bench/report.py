"""The benchmark's tables (printed) and its JSON (written atomically).

JSON schema (``rsrefseg-bench/1``; every key is always present, a figure that was not measured or
has no meaning here is null):

    schema            "rsrefseg-bench/1"
    name              the benchmark's name (``bench``, or the suite entry's)
    composition       the model options composed (``model/clip=…, model/sam=…``)
    finetune          full | lora | frozen
    date              ISO 8601, UTC
    quick             true for ``quick=true``
    device            cpu | cuda[:i];  device_name  the CUDA device's or the CPU's name
    torch, threads    PyTorch version, intra-op threads
    load_average      1, 5, 15-minute load average of the machine (null where the OS has none)
    warmup, repeats   untimed calls, timed calls per figure
    memory_method     how peak memory was measured (null: bench.memory=false)
    flops_method      how FLOPs were counted
    peak_flops_per_s  the device peak MFU is relative to (null: none known);  peak_source  where from
    switches          each fast-path config switch: "absent", or {fast: value, stock: value}
    paths             {fast, stock}: precision, share_image_encodings, per_sample_decoding,
                      overrides, applied, skipped (overrides whose key this composition lacks),
                      compile_first_call_s ({part: seconds} of torch.compile's first calls; {} without)
    loader_dataset    the dataset the loader read (null: loader not measured)
    inference         rows: batch_size (images N), sentences_per_image (K), sentences (N·K),
                      fast / stock: MEASUREMENT + images_per_s, sentences_per_s, flops_per_call, mfu;
                      ratio: fast / stock of images_per_s, sentences_per_s, peak_memory_bytes, mfu
    training          rows: batch_size (samples B), sentences_per_image (K), images (B / K),
                      fast / stock: MEASUREMENT + samples_per_s, flops_per_call, mfu;
                      ratio: fast / stock of samples_per_s, peak_memory_bytes, mfu
    loader            rows: batch_size, batches_per_call, num_workers {fast, stock},
                      fast / stock: MEASUREMENT + samples_per_s; ratio: samples_per_s

    wall_s            seconds the whole benchmark took (building, warm-up, counting included)

    MEASUREMENT       median_s, iqr_s, spread (iqr / median), min_s, max_s, repeats, warmup_s,
                      clock (cuda_events | perf_counter), peak_memory_bytes (null for the loader:
                      its workers are other processes)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rsrefseg.io import atomic_write_json, atomic_write_text

#: columns of the printed tables (and of the .txt files), whatever the terminal
WIDTH = 150

TOP_LEVEL = (
    "schema",
    "name",
    "composition",
    "finetune",
    "date",
    "quick",
    "device",
    "device_name",
    "torch",
    "threads",
    "load_average",
    "warmup",
    "repeats",
    "memory_method",
    "flops_method",
    "peak_flops_per_s",
    "peak_source",
    "switches",
    "paths",
    "loader_dataset",
    "inference",
    "training",
    "loader",
    "wall_s",
)
MEASUREMENT = (
    "median_s",
    "iqr_s",
    "spread",
    "min_s",
    "max_s",
    "repeats",
    "warmup_s",
    "clock",
    "peak_memory_bytes",
)
PATH_FIELDS = (
    "precision",
    "share_image_encodings",
    "per_sample_decoding",
    "overrides",
    "applied",
    "skipped",
    "compile_first_call_s",
)
SECTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "inference": {
        "row": ("batch_size", "sentences_per_image", "sentences", "fast", "stock", "ratio"),
        "measurement": (*MEASUREMENT, "images_per_s", "sentences_per_s", "flops_per_call", "mfu"),
        "ratio": ("images_per_s", "sentences_per_s", "peak_memory_bytes", "mfu"),
    },
    "training": {
        "row": ("batch_size", "sentences_per_image", "images", "fast", "stock", "ratio"),
        "measurement": (*MEASUREMENT, "samples_per_s", "flops_per_call", "mfu"),
        "ratio": ("samples_per_s", "peak_memory_bytes", "mfu"),
    },
    "loader": {
        "row": ("batch_size", "batches_per_call", "num_workers", "fast", "stock", "ratio"),
        "measurement": (*MEASUREMENT, "samples_per_s"),
        "ratio": ("samples_per_s",),
    },
}


def missing_fields(report: Mapping[str, Any]) -> list[str]:
    """The schema's keys ``report`` lacks (dotted paths); empty when it is complete."""
    missing = [key for key in TOP_LEVEL if key not in report]
    for name in ("fast", "stock"):
        path = report.get("paths", {}).get(name, {})
        missing += [f"paths.{name}.{key}" for key in PATH_FIELDS if key not in path]
    for section, shape in SECTIONS.items():
        for i, row in enumerate(report.get(section) or []):
            where = f"{section}[{i}]"
            missing += [f"{where}.{key}" for key in shape["row"] if key not in row]
            for name in ("fast", "stock"):
                missing += [f"{where}.{name}.{k}" for k in shape["measurement"] if k not in row.get(name, {})]
            missing += [f"{where}.ratio.{k}" for k in shape["ratio"] if k not in row.get("ratio", {})]
    return missing


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "—" if value is None else format(value, fmt)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:.0f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _timed(m: Mapping[str, Any], rate: str) -> str:
    return f"{m[rate]:.1f} ±{100 * m['spread'] / 2:.0f}%"


def _figure_table(title: str, first: str, rate: str) -> Table:
    """A table of per-path figures: ``first``, then ``rate`` / memory / MFU, fast, stock and ratio."""
    table = Table(title=title)
    for column in (
        first,
        f"{rate} fast",
        f"{rate} stock",
        "×",
        "MiB fast",
        "MiB stock",
        "×",
        "MFU% fast",
        "MFU% stock",
    ):
        table.add_column(column, justify="right")
    return table


def _memory_and_mfu(row: Mapping[str, Any]) -> list[str]:
    f, s, r = row["fast"], row["stock"], row["ratio"]
    return [
        _mib(f["peak_memory_bytes"]),
        _mib(s["peak_memory_bytes"]),
        _ratio(r["peak_memory_bytes"]),
        _pct(f["mfu"]),
        _pct(s["mfu"]),
    ]


def tables(report: Mapping[str, Any]) -> list[Table]:
    """One table per section measured: fast, stock and their ratio for every figure."""
    title = f"{report['name']}: {report['composition']}, {report['finetune']} — {report['device_name']}"
    out = []
    if report["inference"]:
        table = _figure_table(f"inference ({title})", "N×K", "img/s")
        # sentences/s last: the same timings as images/s, K× the count
        for label in ("sent/s fast", "sent/s stock", "×"):
            table.add_column(label, justify="right")
        for row in report["inference"]:
            f, s, r = row["fast"], row["stock"], row["ratio"]
            table.add_row(
                f"{row['batch_size']}×{row['sentences_per_image']}",
                _timed(f, "images_per_s"), _timed(s, "images_per_s"), _ratio(r["images_per_s"]),
                *_memory_and_mfu(row),
                _num(f["sentences_per_s"]), _num(s["sentences_per_s"]), _ratio(r["sentences_per_s"]),
            )  # fmt: skip
        out.append(table)
    if report["training"]:
        table = _figure_table(f"training steps ({title})", "B (K)", "samples/s")
        for row in report["training"]:
            f, s, r = row["fast"], row["stock"], row["ratio"]
            table.add_row(
                f"{row['batch_size']} ({row['sentences_per_image']})",
                _timed(f, "samples_per_s"), _timed(s, "samples_per_s"), _ratio(r["samples_per_s"]),
                *_memory_and_mfu(row),
            )  # fmt: skip
        out.append(table)
    if report["loader"]:
        table = Table(title=f"data loader ({report['loader_dataset']})")
        for column in ("batch", "workers fast/stock", "samples/s fast", "samples/s stock", "×"):
            table.add_column(column, justify="right")
        for row in report["loader"]:
            workers = row["num_workers"]
            table.add_row(
                str(row["batch_size"]),
                f"{workers['fast']}/{workers['stock']}",
                _timed(row["fast"], "samples_per_s"),
                _timed(row["stock"], "samples_per_s"),
                _ratio(row["ratio"]["samples_per_s"]),
            )
        out.append(table)
    return out


def render(report: Mapping[str, Any], console: Console | None = None) -> str:
    """Print the tables and a line on the paths; returns the printed text."""
    console = console or Console(record=True, width=WIDTH)
    for table in tables(report):
        console.print(table)
    paths = report["paths"]
    console.print(
        f"fast: {paths['fast']['precision']}, shared encodings {paths['fast']['share_image_encodings']}, "
        f"applied {paths['fast']['applied']}, absent {paths['fast']['skipped']}\n"
        f"stock: {paths['stock']['precision']}, per-sample decoding {paths['stock']['per_sample_decoding']}, "
        f"applied {paths['stock']['applied']}, absent {paths['stock']['skipped']}\n"
        f"timing: median of {report['repeats']} after {report['warmup']} warm-up (± half the IQR); "
        f"memory: {report['memory_method']}; MFU peak: {report['peak_source']}; "
        f"load average {report['load_average']}",
        highlight=False,
    )
    return console.export_text() if console.record else ""


def write_report(report: Mapping[str, Any], out_dir: Path, stem: str, text: str, *, force: bool) -> Path:
    """Write ``<stem>.json`` and ``<stem>.txt`` (the printed tables) into ``out_dir``, atomically.

    Raises:
        FileExistsError: one of them exists and ``force`` is false.
    """
    targets = [out_dir / f"{stem}.json", out_dir / f"{stem}.txt"]
    check_free(targets, force=force)
    atomic_write_text(targets[1], text)
    return atomic_write_json(targets[0], dict(report))


def check_free(targets: list[Path], *, force: bool) -> None:
    """Refuse to replace existing outputs unless ``force``.

    Raises:
        FileExistsError: naming the files and ``force=true``.
    """
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"refusing to replace {', '.join(existing)}; choose another out_dir or set force=true"
        )
