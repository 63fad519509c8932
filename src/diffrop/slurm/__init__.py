"""`hydra/launcher=slurm`'s logic: the submitit launch (`launch`) and the check that cancels a sweep whose jobs
can never start (`pending`). The Hydra plugin itself is the thin src/hydra_plugins/diffrop_slurm."""
