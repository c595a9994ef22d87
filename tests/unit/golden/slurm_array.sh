#!/bin/bash
# orch job array: sweep demo-sweep-0, 3 runs
#SBATCH --job-name=demo
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16384M
#SBATCH --time=02:00:00
#SBATCH --output=/results/demo/.arrays/sweep-0-%a.log
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@60
#SBATCH --requeue
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --partition=gpu
#SBATCH --account=lab
#SBATCH --array=0-2%2
#SBATCH --gres-flags=enforce-binding
set -eo pipefail
ORCH_RUN_DIRS=(
  /results/demo/demo-0
  /results/demo/demo-1
  /results/demo/demo-2
)
run_dir=${ORCH_RUN_DIRS[$SLURM_ARRAY_TASK_ID]}
exec >>"$run_dir/logs/scheduler.log" 2>&1
exec bash "$run_dir/job.sh"
