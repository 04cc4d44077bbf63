"""`rsrefseg-aggregate`: a sweep's jobs as a paper-style ablation table with paired significance.

    rsrefseg-aggregate logs/train/multiruns/2026-01-05_10-00-00 --reference model/prompter=cascaded
    rsrefseg-aggregate <sweep> <more sweeps> --reference model/prompter=cascaded --out results/prompter \\
        --bootstrap 10000 --seed 0

Reads every job folder of the Hydra multirun folders (``.hydra/overrides.yaml``, ``status.json``,
``metrics.json``, ``samples_test.csv``) and groups the finished jobs by *setting*: their overrides
without ``seed=`` and without logistic ones (``hydra.*``, ``logger``, ``paths.*``, ``task_name``,
``ckpt_path``; add more with ``--ignore trainer.devices``). Writes into ``--out`` (default
``<first sweep>/aggregate/``):

- ``aggregate.md`` / ``ablation.csv``: one row per setting, Pr@0.5–0.9, cIoU, gIoU and gIoU per
  expression type as mean ± std over seeds (sample std), with the seed count n;
- ``paired.csv`` (and a section of ``aggregate.md``): each setting against ``--reference``,
  Δ gIoU in points with a percentile-bootstrap interval over test samples, paired by sample id,
  seeds pooled, overall and per expression type;
- ``gIoU.png``: gIoU per setting and per type; ``jobs.csv``: every job with its status and logs.

Jobs that failed, were interrupted or killed, are still running, lack metrics, or that
``multirun.yaml``'s grid expects but that have no folder are listed (printed and in
``aggregate.md`` / ``jobs.csv``), never dropped without a word.

Exit status: 0 when every expected job finished and every setting was compared; 3 when the
outputs were written but some jobs failed or are missing (or a setting could not be compared), so
a script notices an incomplete sweep; 1 for an error (nothing usable, an ambiguous reference, a
bad file), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from rsrefseg.errors import reports_errors
from rsrefseg.evaluation.sweep.report import Options, aggregate, markdown_report, write_outputs

PROG = "rsrefseg-aggregate"

#: exit status when the outputs were written but the sweep is incomplete
EXIT_INCOMPLETE = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Aggregate Hydra sweeps into an ablation table with paired bootstrap comparisons.",
        epilog="exit status: 0 every expected job finished; 3 outputs written, but jobs failed or are "
        "missing (listed); 1 an error; 2 a bad command line",
    )
    parser.add_argument("sweeps", nargs="+", type=Path, help="Hydra multirun folders (or single run folders)")
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the reference setting: the one whose overrides include this (repeat to narrow it down)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: <first sweep>/aggregate)")
    parser.add_argument(
        "--split", default="test", help="metrics and samples_<split>.csv to read (default: test)"
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY",
        help="an override key (fnmatch pattern) that does not make a setting, e.g. trainer.devices",
    )
    parser.add_argument(
        "--seed-key", default="seed", help="the override that numbers replicates (default: seed)"
    )
    parser.add_argument(
        "--bootstrap", type=_positive, default=10_000, help="bootstrap resamples (default: 10000)"
    )
    parser.add_argument(
        "--confidence", type=_fraction, default=0.95, help="interval coverage (default: 0.95)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of resamples, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a coverage between 0 and 1 (e.g. 0.95), got {text}")
    return value


@reports_errors(PROG)
def main(argv: Iterable[str] | None = None) -> int:
    """Console entry point; returns 0 (complete), 3 (written, but jobs failed or are missing)."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    for override in args.reference:
        if "=" not in override:
            build_parser().error(
                f"--reference {override!r}: expected KEY=VALUE, e.g. model/prompter=cascaded"
            )
    options = Options(
        split=args.split,
        reference=tuple(args.reference),
        ignore=tuple(args.ignore),
        seed_key=args.seed_key,
        resamples=args.bootstrap,
        confidence=args.confidence,
        seed=args.seed,
    )
    result = aggregate(args.sweeps, options)
    out = args.out if args.out is not None else args.sweeps[0] / "aggregate"
    paths = write_outputs(result, out)
    print(markdown_report(result))
    print("written:\n" + "\n".join(f"  {path}" for path in paths.values()))
    if result.complete:
        return 0
    print(
        f"{PROG}: INCOMPLETE: {len(result.failed)} failed or unfinished job(s), "
        f"{len(result.missing)} missing job(s), {len(result.not_compared)} setting(s) not compared; "
        f"listed in {paths['report']} and {paths['jobs']}",
        file=sys.stderr,
    )
    return EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
