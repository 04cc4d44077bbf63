"""`rsrefseg-predict`: masks from a checkpoint for your own images and sentences.

    rsrefseg-predict CKPT --image scene.png --sentence "the small gray vehicle" --out preds/
    rsrefseg-predict CKPT --pairs pairs.csv --out preds/ [--image-root images/]
    rsrefseg-predict CKPT --raster big.tif --sentence "storage tanks north of the river" --out preds/ \\
        [--tile-size 512 --overlap 128 --bands 3,2,1 --scaling auto --output mask --polygons gpkg]
    rsrefseg-predict CKPT --benchmark

CKPT is any checkpoint rsrefseg-eval accepts: a rsrefseg-train checkpoint, a rsrefseg-export file,
or a LoRA checkpoint whose backbone files exist (--set KEY=PATH re-points them).

--image / --pairs write per pair <id>_mask.png (0 / 255, the image's size), <id>_overlay.png (the
mask's outline and the sentence; --no-overlay skips it) and, with --probability, a 16-bit
<id>_probability.png (value / 65535), plus summary.csv and summary.json (status, reason, outputs,
foreground pixels, seconds). --sentence may be repeated: one image, several sentences, encoded once.
Pairs files: CSV with columns image,sentence[,id], JSON Lines {"image", "sentence"[, "id"]}, or the
unified JSONL of rsrefseg-prepare; relative image paths are taken from the pairs file's folder (the
unified JSONL: its images/ folder) unless --image-root is given. Images are read as the datasets
read them: pixels as stored, EXIF orientation not applied.

--raster predicts one sentence over a georeferenced raster of any size, window by window, and
writes <id>_probability.tif or <id>_mask.tif (a COG with the source's CRS, transform and nodata)
and, with --polygons, <id>_polygons.gpkg / .geojson, plus <id>_<output>_summary.json (size, tiles,
seconds, megapixels per second). The sentence is answered tile by tile: docs/predict.md §5 says
what that means for "the largest …".

Nothing is overwritten unless --force: every output is checked before anything runs.
Exit status: 0 every pair written; 1 a pair failed (the summary says which and why) or a file
error; 2 a bad command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rsrefseg.errors import reports_errors

PROG = "rsrefseg-predict"
RASTER_OPTIONS = ("tile_size", "overlap", "bands", "scaling", "output", "polygons", "min_area", "simplify")


@reports_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    check_arguments(parser, args)
    # imported here: a bad command line is refused before torch loads (a second, not five)
    from rsrefseg.process import prepare_process

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pyogrio").setLevel(logging.WARNING)  # "Created N records": said by our summary line
    prepare_process()
    if args.benchmark:
        from rsrefseg.predict.speed import run

        print(run(load_predictor(args)))
        return 0
    if args.raster:
        return predict_raster(args)
    return predict_pairs(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", help="a rsrefseg-train checkpoint, rsrefseg-export file or LoRA checkpoint"
    )
    what = parser.add_argument_group("what to predict (one of)")
    what.add_argument("--image", help="one image file (PNG, JPEG, TIFF, … 8-bit RGB or grey)")
    what.add_argument("--pairs", help="a CSV / JSONL of (image, sentence[, id]) pairs, or a unified JSONL")
    what.add_argument("--raster", help="a georeferenced raster (GeoTIFF or any GDAL raster), read in tiles")
    what.add_argument("--benchmark", action="store_true", help="time 8 sentences on one image: 1 call vs 8")
    what.add_argument(
        "--sentence", action="append", default=None, help="the referring expression (--image: repeatable)"
    )
    what.add_argument("--id", help="the output name stem for --image / --raster (default: the file's stem)")
    what.add_argument("--image-root", help="--pairs: the folder relative image paths are taken from")

    out = parser.add_argument_group("output")
    out.add_argument("--out", help="the output folder (created)")
    out.add_argument("--force", action="store_true", help="replace existing outputs")
    out.add_argument("--no-overlay", action="store_true", help="do not write <id>_overlay.png")
    out.add_argument("--probability", action="store_true", help="also write the probability as 16-bit PNG")

    model = parser.add_argument_group("model")
    model.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, … (default cpu)")
    model.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="fp16: CUDA only"
    )
    model.add_argument("--batch-size", type=_positive_int, default=8, help="images (or tiles) per call")
    model.add_argument(
        "--threshold",
        type=_probability,
        default=None,
        help="foreground probability (default: the checkpoint's)",
    )
    model.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="change the checkpoint's stored config, e.g. model.sam.sam.checkpoint=/data/sam.pth "
        "(repeatable)",
    )

    geo = parser.add_argument_group("--raster options")
    geo.add_argument(
        "--tile-size", type=_positive_int, help="tile side in raster pixels (default: model input)"
    )
    geo.add_argument(
        "--overlap", type=_non_negative_int, help="tile overlap in pixels (default: tile size / 4)"
    )
    geo.add_argument("--bands", help="1-based bands as RGB, e.g. 3,2,1 (one band is repeated)")
    geo.add_argument("--scaling", help="auto (default), percentile[:LOW,HIGH], minmax, none or range:LO,HI")
    geo.add_argument(
        "--output", choices=["probability", "mask"], help="the GeoTIFF's values (default probability)"
    )
    geo.add_argument("--polygons", choices=["gpkg", "geojson"], help="also write the mask as polygons")
    geo.add_argument("--min-area", type=_non_negative_float, help="drop smaller polygons (CRS units²)")
    geo.add_argument(
        "--simplify", type=_non_negative_float, help="polygon simplification tolerance (CRS units)"
    )
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express; each refusal names the flag (exit 2)."""
    modes = [flag for flag in ("image", "pairs", "raster", "benchmark") if getattr(args, flag)]
    if len(modes) != 1:
        given = ", ".join(f"--{m}" for m in modes) or "none"
        parser.error(f"give exactly one of --image, --pairs, --raster or --benchmark (given: {given})")
    mode = modes[0]
    if mode in ("image", "raster") and not args.sentence:
        parser.error(f'--{mode} needs --sentence "the referring expression"')
    if mode in ("pairs", "benchmark") and args.sentence:
        parser.error(f"--sentence goes with --image or --raster; --{mode} {_sentence_hint(mode)}")
    if mode == "raster" and len(args.sentence) > 1:
        parser.error("--raster takes one --sentence (run once per sentence)")
    if mode != "benchmark" and not args.out:
        parser.error("--out FOLDER is required: where the masks and the summary are written")
    if args.image_root and mode != "pairs":
        parser.error("--image-root goes with --pairs")
    if args.id is not None and mode not in ("image", "raster"):
        parser.error("--id goes with --image or --raster (a pairs file has an id column)")
    used = [f"--{name.replace('_', '-')}" for name in RASTER_OPTIONS if getattr(args, name) is not None]
    if used and mode != "raster":
        parser.error(f"{', '.join(used)} go(es) with --raster")
    if mode == "raster" and (args.no_overlay or args.probability):
        parser.error("--no-overlay / --probability go with --image or --pairs; --raster has --output")


def _sentence_hint(mode: str) -> str:
    return "reads the sentences from the file" if mode == "pairs" else "uses its own sentences"


def load_predictor(args: argparse.Namespace):
    from rsrefseg.predict import Predictor

    return Predictor.from_checkpoint(
        args.checkpoint,
        device=args.device,
        precision=args.precision,
        threshold=args.threshold,
        overrides=args.overrides,
    )


def predict_pairs(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rsrefseg.predict.batch import (
        OutputOptions,
        planned_outputs,
        refuse_existing,
        run_pairs,
        write_summary,
    )
    from rsrefseg.predict.pairs import Pair, check_unique_ids, read_pairs

    out_dir = _out_dir(args.out)
    if args.pairs:
        pairs = read_pairs(args.pairs, image_root=args.image_root)
    else:
        image = Path(args.image).expanduser()
        base = args.id if args.id is not None else image.stem
        several = len(args.sentence) > 1
        pairs = [
            Pair(id=f"{base}-{k}" if several else base, image=image, sentence=s, source="command line")
            for k, s in enumerate(args.sentence, start=1)
        ]
        check_unique_ids(pairs)
    options = OutputOptions(out_dir=out_dir, overlay=not args.no_overlay, probability=args.probability)
    refuse_existing(planned_outputs(pairs, options), force=args.force)
    predictor = load_predictor(args)
    with tqdm(total=len(pairs), unit="pair", desc=PROG, disable=None, file=sys.stderr) as bar:
        results = run_pairs(
            predictor,
            pairs,
            options,
            batch_size=args.batch_size,
            force=args.force,
            report=lambda message: bar.write(f"{PROG}: {message}", file=sys.stderr),
            progress=bar.update,
        )
    summary = write_summary(results, options, run=_run_settings(args, predictor), force=args.force)
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} of {len(results)} masks written to {out_dir}; summary: {summary[0]}")
    if failed:
        print(f"{PROG}: {failed} of {len(results)} pairs failed (reasons in {summary[0]})", file=sys.stderr)
        return 1
    return 0


def predict_raster(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rsrefseg.geo import parse_scaling
    from rsrefseg.geo import predict_raster as run_raster
    from rsrefseg.io import atomic_write_json
    from rsrefseg.predict.batch import refuse_existing
    from rsrefseg.predict.pairs import file_stem
    from rsrefseg.predict.sentences import SentenceTruncatedWarning

    out_dir = _out_dir(args.out)
    raster = Path(args.raster).expanduser()
    if not raster.exists():
        raise FileNotFoundError(f"raster not found: {raster}")
    stem = file_stem(args.id if args.id is not None else raster.stem)
    output = args.output or "probability"
    out_tif = out_dir / f"{stem}_{output}.tif"
    polygons = out_dir / f"{stem}_polygons.{args.polygons}" if args.polygons else None
    summary_path = out_dir / f"{stem}_{output}_summary.json"
    refuse_existing([p for p in (out_tif, polygons, summary_path) if p is not None], force=args.force)
    scaling = parse_scaling(args.scaling or "auto")  # refused before the model loads
    [sentence] = args.sentence
    if not sentence.strip():
        raise ValueError(
            f"--sentence {sentence!r} is empty; give a referring expression such as "
            "'storage tanks north of the river'"
        )
    predictor = load_predictor(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SentenceTruncatedWarning)
        [text] = predictor.clean([sentence])
    for warning in caught:
        print(
            f"{PROG}: warning: {str(warning.message).replace('sentence 0 ', 'the sentence ', 1)}",
            file=sys.stderr,
        )

    def tile_function(tiles):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SentenceTruncatedWarning)  # said once above
            return predictor.probabilities(tiles, text)

    with tqdm(unit="tile", desc=PROG, disable=None, file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        summary = run_raster(
            raster,
            tile_function,
            out_tif,
            input_size=predictor.input_size,
            tile_size=args.tile_size,
            overlap=args.overlap,
            bands=args.bands,
            scaling=scaling,
            output=output,
            threshold=predictor.threshold,
            batch_size=args.batch_size,
            force=args.force,
            polygons_path=polygons,
            min_area=args.min_area or 0.0,
            simplify=args.simplify or 0.0,
            progress=progress,
        )
    record = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(summary).items()},
        "megapixels_per_second": summary.megapixels_per_second,
        "source": str(raster),
        "sentence": text,
        "run": _run_settings(args, predictor),
    }
    atomic_write_json(summary_path, record)
    extra = f" and {summary.polygons_written} polygons to {polygons}" if polygons else ""
    print(
        f"wrote {out_tif}{extra}: {summary.height}×{summary.width} px, {summary.tiles} tiles "
        f"({summary.tiles_skipped} nodata), {summary.megapixels_per_second:.2f} Mpx/s; "
        f"summary: {summary_path}"
    )
    return 0


def _out_dir(value: str) -> Path:
    out_dir = Path(value).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} is a file; give a folder")
    return out_dir


def _run_settings(args: argparse.Namespace, predictor: Any) -> dict[str, Any]:
    return {
        "checkpoint": str(args.checkpoint),
        "device": str(predictor.device),
        "precision": predictor.precision,
        "threshold": predictor.threshold,
        "input_size": predictor.input_size,
        "batch_size": args.batch_size,
        "overrides": list(args.overrides),
        "command": " ".join([PROG, *(json.dumps(a) if " " in a else a for a in args.argv)]),
    }


def _positive_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 0")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number >= 0")
    return value


def _probability(text: str) -> float:
    value = _number(text, float, "a number")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a probability strictly between 0 and 1")
    return value


def _number(text: str, kind: type, name: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None


def _override(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KEY=VALUE (e.g. model.sam.sam.checkpoint=/data/sam.pth)"
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
