"""Sentences per second: several sentences on one image in one call against one call per sentence.

    python -m rsrefseg.predict.speed [CKPT] [--sentences 8] [--repeats 7] [--device cpu]
    rsrefseg-predict CKPT --benchmark

One call with N sentences runs CLIP's and SAM's image encoders once; N calls run them N times.
Each way is timed ``repeats`` times after ``warmup`` untimed runs, and the median is reported
(the first calls allocate and, on a GPU, compile kernels). Without a checkpoint the default tiny
network with random weights is timed: the cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rsrefseg.bench.timing import time_calls
from rsrefseg.errors import reports_errors
from rsrefseg.predict.predictor import Predictor

#: referring expressions of the kinds the benchmark's datasets hold (8, cycled for more)
SENTENCES = (
    "the small gray vehicle left of the large building",
    "the storage tank north of the river",
    "a ship",
    "the red-roofed house next to the road",
    "the largest airplane on the apron",
    "the tree in the top right corner",
    "the white car parked near the bridge",
    "the round swimming pool behind the house",
)


@dataclass(frozen=True)
class Timing:
    """One way of predicting, timed.

    Attributes:
        name: What was timed.
        calls: Predictor calls per run.
        sentences: Sentences per run.
        seconds: Median wall time of one run.
    """

    name: str
    calls: int
    sentences: int
    seconds: float

    @property
    def sentences_per_second(self) -> float:
        return self.sentences / max(self.seconds, 1e-12)


def benchmark(
    predictor: Predictor,
    *,
    sentences: int = 8,
    image_size: tuple[int, int] = (256, 256),
    repeats: int = 7,
    warmup: int = 2,
    seed: int = 0,
) -> list[Timing]:
    """Time N sentences on one image: one call with the list, then N calls of one sentence.

    Args:
        predictor: The model.
        sentences: N.
        image_size: (H, W) of the random RGB image (resized to the model input as any image is).
        repeats: Timed runs per way (the median is kept).
        warmup: Untimed runs first.
        seed: The image's random seed.

    Returns:
        [one call, N calls].
    """
    if sentences < 1:
        raise ValueError(f"sentences={sentences}; expected a positive integer")
    image = np.random.default_rng(seed).integers(0, 256, (*image_size, 3), dtype=np.uint8)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(sentences)]
    timed = dict(repeats=repeats, warmup=warmup, device=predictor.device)
    one_call = time_calls(lambda: predictor.predict(image, texts), **timed).median_s
    separate = time_calls(lambda: [predictor.predict(image, text) for text in texts], **timed).median_s
    return [
        Timing(f"{sentences} sentences, one image, 1 call", 1, sentences, one_call),
        Timing(f"{sentences} sentences, one image, {sentences} calls", sentences, sentences, separate),
    ]


def format_table(timings: Sequence[Timing], *, title: str = "") -> str:
    """A Markdown table: seconds, sentences per second and the speed-up over the slowest way."""
    slowest = max(t.seconds for t in timings)
    lines = [title] if title else []
    lines += [
        "| way | calls | median s | sentences/s | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in timings:
        lines.append(
            f"| {t.name} | {t.calls} | {t.seconds:.4f} | {t.sentences_per_second:.1f} | "
            f"{slowest / t.seconds:.2f}× |"
        )
    return "\n".join(lines)


def describe_setup(predictor: Predictor, image_size: tuple[int, int]) -> str:
    device = predictor.device
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    return (
        f"model input {predictor.input_size}px, image {image_size[0]}×{image_size[1]}, {device} ({name}), "
        f"{predictor.precision}, torch {torch.__version__}"
    )


def run(predictor: Predictor, *, sentences: int = 8, repeats: int = 7, warmup: int = 2) -> str:
    """Benchmark and return the printed table."""
    image_size = (256, 256)
    timings = benchmark(predictor, sentences=sentences, image_size=image_size, repeats=repeats, warmup=warmup)
    return format_table(timings, title=describe_setup(predictor, image_size))


@reports_errors("python -m rsrefseg.predict.speed")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", nargs="?", help="a checkpoint (default: the tiny network, random weights)"
    )
    parser.add_argument("--sentences", type=int, default=8, help="sentences on the image (default 8)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per way (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args(argv)
    from rsrefseg.process import prepare_process

    prepare_process()
    if args.checkpoint:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision)
    else:
        predictor = _tiny_predictor(args.device, args.precision)
    print(run(predictor, sentences=args.sentences, repeats=args.repeats, warmup=args.warmup))


def _tiny_predictor(device: str, precision: str) -> Predictor:
    """The default run's network (tiny CLIP and SAM), random weights."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from rsrefseg.config.build import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["paths.output_dir=."])
    torch.manual_seed(0)
    net = instantiate(cfg.model, _convert_="partial")
    return Predictor(net, input_size=int(cfg.data.image_size), device=device, precision=precision)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
