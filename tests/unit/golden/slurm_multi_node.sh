#!/bin/bash
# orch SLURM job for run demo-20260101-000000-abcd on 2 nodes (template: multi_node.sh.tmpl).
# Placeholders are documented in slurm_templates/README.md; every value is shell-quoted.
#SBATCH --job-name=demo
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=16384M
#SBATCH --time=02:00:00
#SBATCH --output=/results/demo/demo-20260101-000000-abcd/logs/scheduler.log
#SBATCH --open-mode=append
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --gres=gpu:4
#SBATCH --partition=gpu
#SBATCH --account=lab
#SBATCH --gres-flags=enforce-binding
set -eo pipefail
cd /home/me/project
# setup: cluster profile, then the spec's resources.setup
module load cuda/12.4
export WANDB_MODE=offline
export ORCH_RESULTS_ROOT=/results
# The head node (machine rank 0) and a rendezvous port derived from the job id, so two jobs
# sharing a node never pick the same port.
ORCH_MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
ORCH_MAIN_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))
export ORCH_MAIN_ADDR ORCH_MAIN_PORT
# The job wrapper (on the first node) runs srun, which starts one task per node; each task
# runs `accelerate launch` with its own $SLURM_NODEID as machine rank, under orch's node shim
# (orchestrator/backends/slurm/node.py): the launcher survives the warning signal, which the
# shim passes on to every trainer process of its node. The per-node command is single-quoted
# so $SLURM_NODEID expands in each task, not in this batch shell.
exec /opt/venv/bin/python -m orchestrator.job --backend slurm /results/demo/demo-20260101-000000-abcd -- srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=16 --kill-on-bad-exit=1 bash -c 'exec /opt/venv/bin/python -m orchestrator.backends.slurm.node --signal TERM -- /opt/venv/bin/python -m accelerate.commands.launch --num_machines 2 --machine_rank "$SLURM_NODEID" --main_process_ip "$ORCH_MAIN_ADDR" --main_process_port "$ORCH_MAIN_PORT" --num_processes 8 --multi_gpu --dynamo_backend no -m trainers /results/demo/demo-20260101-000000-abcd'
