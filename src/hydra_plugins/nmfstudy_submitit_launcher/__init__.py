"""hydra-submitit-launcher's SLURM launcher, made to survive what clusters do to jobs (see slurm_launcher)."""
