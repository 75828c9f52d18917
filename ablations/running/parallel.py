"""Rank and world size of the current process (1 task when torch.distributed is not initialised)."""
import torch
import torch.distributed as dist


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def all_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over tasks (identity with one task)."""
    if world() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= world()
    return x


def any_true(flag: bool, device) -> bool:
    """Whether any task's flag is set; every task gets the same answer."""
    if world() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj) -> list:
    """Every task's `obj`, in rank order."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def from_main(obj):
    """Rank 0's `obj` on every task: a decision only rank 0 may take (it alone reads and writes the
    run's folder) is then taken once, and every task follows it."""
    if world() == 1:
        return obj
    out = [obj]
    dist.broadcast_object_list(out, src=0)
    return out[0]


def barrier():
    """Wait until every task gets here (a no-op with one task)."""
    if world() > 1:
        dist.barrier()
