"""orch's sbatch templates, shipped as package data (see README.md beside this file)."""
