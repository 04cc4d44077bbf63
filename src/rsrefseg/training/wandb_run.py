"""What a job records in its W&B run besides the logged metrics, and how the run ends.

- at the start: the resolved config, the parameter table and the data report in the run's config
  (``parameters/<component>/trainable``, ``data_report/<split>/…``), so runs can be filtered and
  compared by any of them;
- at the end: the metric columns of ``metrics.json`` (the test split, the shuffled-sentence control,
  the trivial baselines) in the run's summary as ``<column>/<metric>``;
- always: the run is finished, with exit code 1 when the job raised (W&B marks it failed).

Lightning never finishes a W&B run; a run left open would also be reused by the next job of a
sweep in the same process. Only rank 0 holds the run (other ranks' ``experiment`` is a dummy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only


def wandb_loggers(loggers: Iterable[Any]) -> list[WandbLogger]:
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


@rank_zero_only
def record_run(
    loggers: Iterable[Any],
    *,
    config: Mapping[str, Any],
    parameters: Iterable[tuple[str, int, int]] = (),
    data: Mapping[str, Any] | None = None,
) -> None:
    """Put the job's description in the config of each W&B run (this starts the run).

    Args:
        loggers: the trainer's loggers; only W&B ones are written to.
        config: the resolved run configuration.
        parameters: (component, trainable, total) rows, as ``RefSegModule.parameter_rows()``.
        data: the data report, split → statistics (``RefSegDataModule.describe()``).
    """
    for lg in wandb_loggers(loggers):
        lg.log_hyperparams(dict(config))
        extra: dict[str, Any] = {
            "parameters": {
                name: {"trainable": trainable, "total": total} for name, trainable, total in parameters
            }
        }
        if data:
            extra["data_report"] = dict(data)
        lg.experiment.config.update(extra, allow_val_change=True)


@rank_zero_only
def record_summary(loggers: Iterable[Any], columns: Mapping[str, Mapping[str, Any]]) -> None:
    """Put the final metric columns (``{"test": {"gIoU": …}, "test_shuffled": …}``) in each run's summary."""
    values = {
        f"{column}/{key}": value for column, metrics in columns.items() for key, value in metrics.items()
    }
    for lg in wandb_loggers(loggers):
        lg.experiment.summary.update(values)


@rank_zero_only
def finish_runs(loggers: Iterable[Any], *, failed: bool) -> None:
    """Finish each W&B run this job started; exit code 1 marks the run failed."""
    for lg in wandb_loggers(loggers):
        # a run is only started on first use: nothing to finish when the job never logged
        if getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish(exit_code=1 if failed else 0)
