"""torch.distributed from the SLURM environment: NCCL on GPUs, gloo on CPUs.

What is identical across task counts: the global batch, its data order, and its timesteps and
noise (every task draws the full batch from the shared generator and takes its slice), so the
gradient is the same mean up to floating-point reduction order. What is not: dropout masks
(seeded per task) and BatchNorm statistics (computed per task on the local slice).
"""
import os

import torch
import torch.distributed as dist


def init_from_slurm():
    """Initialise the process group when the job runs more than one task; a no-op otherwise."""
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    import submitit
    env = submitit.helpers.TorchDistributedEnvironment().export()
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
