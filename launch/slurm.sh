#!/usr/bin/env bash
# Multi-node training under SLURM: one task per node, each running `accelerate launch` with its node
# rank and the first node as the rendezvous. Usage:
#   sbatch --nodes 2 launch/slurm.sh recipes/cityscapes_ablations.yaml [--set key=value ...]
#SBATCH --job-name=regioncontrast
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
  --config_file launch/multi_node.yaml \
  --num_machines $SLURM_NNODES \
  --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
  --machine_rank \$SLURM_NODEID \
  --main_process_ip $MAIN_NODE \
  --main_process_port $MAIN_PORT \
  harness/run.py $*"
