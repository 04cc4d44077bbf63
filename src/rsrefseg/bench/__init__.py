"""``rsrefseg-bench``: throughput, peak memory and MFU of a composition, fast path against stock path.

Modules, one job each: :mod:`~rsrefseg.bench.timing` (warm-up, timed repeats, median and spread),
:mod:`~rsrefseg.bench.paths` (the two paths: config overrides, precision, call layout),
:mod:`~rsrefseg.bench.inference`, :mod:`~rsrefseg.bench.training`, :mod:`~rsrefseg.bench.loader`
(the three workloads), :mod:`~rsrefseg.bench.memory`, :mod:`~rsrefseg.bench.mfu`,
:mod:`~rsrefseg.bench.run` (one composition, both paths), :mod:`~rsrefseg.bench.suite` (named sets
of compositions), :mod:`~rsrefseg.bench.composition` (composing inside a Hydra job) and
:mod:`~rsrefseg.bench.report` (tables, JSON schema, atomic writes).
"""
