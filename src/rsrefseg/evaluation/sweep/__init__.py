"""Collect a Hydra sweep's jobs into a paper-style ablation table (``rsrefseg-aggregate``).

One module per step: :mod:`.jobs` reads the job folders of a multirun, :mod:`.grid` says which
jobs the sweep should have run, :mod:`.settings` groups jobs by setting (everything but the
seed), :mod:`.table` gives mean ± std over seeds, :mod:`.paired` compares each setting with a
reference sample by sample (paired bootstrap), :mod:`.plot` draws gIoU per setting and
:mod:`.report` writes it all.
"""
