"""rsrefseg's Hydra launchers (``hydra/launcher=slurm`` / ``local``).

Hydra instantiates launchers only from the ``hydra_plugins`` namespace; the code lives in
:mod:`rsrefseg.launch.submitit_launchers`, these names only place it where Hydra looks.
"""

from rsrefseg.launch import submitit_launchers as _launchers


class SlurmLauncher(_launchers.SlurmLauncher):
    """One SLURM job per sweep job, one ``srun`` task per device (:mod:`rsrefseg.launch`)."""


class LocalLauncher(_launchers.LocalLauncher):
    """The same layout as processes on this machine (:mod:`rsrefseg.launch`)."""
