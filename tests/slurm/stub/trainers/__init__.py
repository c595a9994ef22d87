"""A stand-in for the real `trainers` package, used only by tests/slurm (see __main__)."""
