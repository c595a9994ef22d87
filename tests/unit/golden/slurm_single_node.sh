#!/bin/bash
# orch SLURM job for run demo-20260101-000000-abcd (template: single_node.sh.tmpl).
# Placeholders are documented in slurm_templates/README.md; every value is shell-quoted.
#SBATCH --job-name=demo
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16384M
#SBATCH --time=02:00:00
#SBATCH --output=/results/demo/demo-20260101-000000-abcd/logs/scheduler.log
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@60
#SBATCH --requeue
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --partition=gpu
#SBATCH --account=lab
#SBATCH --qos=high
#SBATCH --dependency=afterok:12:13
#SBATCH --gres-flags=enforce-binding
set -eo pipefail
cd /home/me/project
# setup: cluster profile, then the spec's resources.setup
module load cuda/12.4
export WANDB_MODE=offline
export ORCH_RESULTS_ROOT=/results
# The job wrapper records attempts, heartbeats and the exit status in the run folder,
# forwards Slurm's warning signal to the trainer, and requeues the job when the trainer
# exits 75 (checkpointed) while the retry budget allows. `exec` keeps it the batch shell,
# which is what `--signal=B:...` signals.
exec /opt/venv/bin/python -m orchestrator.job --backend slurm /results/demo/demo-20260101-000000-abcd
