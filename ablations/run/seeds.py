"""Every seed the pipeline derives, in one place. No torch.

A derived seed folds a purpose and integers into one: s = purpose index, then s = s * M + part for
each part. Different purposes never share a stream, and `data_order` keeps the historical
seed * M + epoch (the committed Fashion-MNIST classifier was trained with it).
"""
M = 1_000_003
PURPOSES = (
    "data_order",   # (seed, epoch): the permutation of the training set in that epoch
    "dropout",      # (seed, step, rank): dropout masks of one optimizer step on one task
    "init",         # (seed,): model initialisation
    "train_noise",  # (seed,): the generator of t and eps during training (checkpointed)
    "image",        # (sample_seed, i): x_T and the sampler noise of generated image i
    "nll",          # (sample_seed, i): the timesteps and noise of test image i in the NLL estimate
    "bn_stats",     # (seed,): the fixed training batches the EMA model's BatchNorm statistics come from
    "denoise",      # (sample_seed, i): the noise of test image i in the x0_rms rows (one eps for every t)
)


def derive(purpose: str, *parts: int) -> int:
    """A seed in [0, 2^63) for `purpose` and its integer parts."""
    s = PURPOSES.index(purpose)
    for p in parts:
        s = s * M + int(p)
    return s % 2**63
