"""Cluster sweeps on Slurm through submitit (installed as ``bench.slurm``)."""
