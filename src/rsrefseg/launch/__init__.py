"""Running sweeps: Hydra launchers that give each job one process per device (SLURM or this machine),
and the guard that keeps a new sweep out of an earlier sweep's folder."""
