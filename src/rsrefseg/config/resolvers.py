"""OmegaConf resolvers the config tree uses to state lengths relative to the run.

- ``${times:0.1,${recipe.epochs}}``: a product, e.g. a schedule phase as a fraction of the epoch
  count (``0.1·E``), so that ``recipe.epochs=100`` moves every phase;
- ``${interval:${trainer.max_steps},4}``: the step interval that fits 4 evenly spaced checks into
  the run (``1000 → 250``, ``200 → 50``), so a shorter run still validates.
"""

from __future__ import annotations

from omegaconf import OmegaConf

#: decimals kept by ``times``: 0.1·300 is 30, not 30.000000000000004
_DECIMALS = 9


def times(factor: float, value: float) -> float | int:
    """``factor · value``, an int when the product is whole."""
    product = round(float(factor) * float(value), _DECIMALS)
    return int(product) if product.is_integer() else product


def interval(total_steps: int, count: int) -> int:
    """The step interval of ``count`` evenly spaced events over ``total_steps`` steps (at least 1)."""
    if int(count) <= 0:
        raise ValueError(f"interval: the number of checks must be > 0, got {count}")
    if int(total_steps) <= 0:
        raise ValueError(
            f"interval: {count} checks need a run bounded in steps, got trainer.max_steps={total_steps}; "
            "set trainer.max_steps, or trainer.val_check_interval directly"
        )
    return max(1, int(total_steps) // int(count))


def register_resolvers() -> None:
    """Register the resolvers once per process (composing a config needs them)."""
    for name, function in (("times", times), ("interval", interval)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
