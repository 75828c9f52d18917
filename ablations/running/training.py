"""The training loop (Ho et al. 2020, Alg. 1): t ~ U{0..T-1}, eps ~ N(0, I), minimise the chosen loss.

Determinism: the data order of epoch e is a permutation seeded by (seed, e), and dropout is
reseeded from (seed, step, rank) every step, so neither needs state; on CUDA only deterministic
kernels run; t and eps come from one
generator whose state is checkpointed with the model, EMA, optimizer and lr schedule (every seed
comes from ablations/grid/seeds.py). A run resumed
from any checkpoint therefore ends bitwise identical to an uninterrupted one on the same machine.

With several tasks (torch.distributed), every task draws the whole global batch's t and eps and
trains on its slice of the batch; DDP averages the gradients.

`channels_last` stores the model and its inputs as NHWC; `compile` runs the forward through
torch.compile (inductor). Both change the floating-point order, so both are in the run id; a compiled
run resumes bitwise like an eager one (tests/test_runs.py). The first compiled step's excess over the
mean step is reported as `compile_s`.

EMA (`ema_decay`): theta_ema <- d theta_ema + (1 - d) theta after every step. With `ema_warmup` the t-th
update (t = 1 first) uses d_t = min(ema_decay, (1 + t) / (10 + t)): TensorFlow's
tf.train.ExponentialMovingAverage with `num_updates`, as score_sde's models/ema.py and latent-diffusion's
LitEma apply it, so the average forgets the initialisation (without it, 0.995^700 = 3% of a 700-step EMA is
the random init). With `bn_stats_batches` > 0, every checkpoint's EMA model gets BatchNorm statistics of
its own weights (`recompute_bn_stats`) instead of the live model's.
"""
import copy
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from ablations.store.checkpoint import load_latest, save_checkpoint
from ablations.running.data import SHAPES, epoch_order, to_model
from ablations.running.parallel import all_mean, any_true, barrier, is_main, rank, world
from ablations.grid.seeds import derive
from core.diffusion import out_channels, q_sample
from core.losses import PARAMS, loss_terms
from core.schedules import make_schedule
from core.unet import UNet

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
# cuBLAS needs this before its first handle to be deterministic (CUDA's "Reproducibility" notes)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def deterministic(device):
    """On CUDA, deterministic kernels: without them (atomic adds in backward passes such as nearest
    upsampling's) two identical runs already differ after a few steps, eager or compiled. An op with no
    deterministic kernel warns, naming itself, rather than stopping an evaluation (none in the U-Net)."""
    if torch.device(device).type == "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class NonFiniteLoss(RuntimeError):
    def __init__(self, step, value):
        super().__init__(f"non-finite loss {value} at step {step}")
        self.step = step


# the config fields build_model reads: runs equal in these share a model shape
ARCHITECTURE = ("dataset", "variance", "model_channels", "mults", "res_blocks", "attention", "heads", "dropout",
                "norm", "groups", "conditioning")


def architecture(cfg) -> tuple:
    """The values of cfg's ARCHITECTURE fields: a key for what depends only on the model's shape."""
    return tuple(getattr(cfg, f) for f in ARCHITECTURE)


def build_model(cfg) -> UNet:
    C, H, _ = SHAPES[cfg.dataset]
    return UNet(channels=C, model_channels=cfg.model_channels, mults=cfg.mults, res_blocks=cfg.res_blocks,
                attention=cfg.attention, heads=cfg.heads, dropout=cfg.dropout, norm=cfg.norm, groups=cfg.groups,
                conditioning=cfg.conditioning, out_channels=out_channels(C, cfg.variance), resolution=H)


def memory_format(cfg):
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def total_steps(cfg, n_train: int) -> int:
    return cfg.epochs * (n_train // cfg.batch) if cfg.epochs > 0 else cfg.train_steps


def warm(cfg, step: int) -> float:
    """The learning rate of the `step`-th update (1 for the first) as a fraction of `lr`: linear warm-up
    over `warmup` steps (Ho et al. 2020, App. B: 5,000), then 1."""
    return min(1.0, step / cfg.warmup) if cfg.warmup > 0 else 1.0


def lr_at(cfg, step: int) -> float:
    return cfg.lr * warm(cfg, step)


def ema_decay_at(decay: float, t: int, warmup: bool) -> float:
    """The decay of the t-th EMA update (t = 1 for the first): `decay`, or with `warmup`
    min(decay, (1 + t) / (10 + t)) (tf.train.ExponentialMovingAverage's num_updates rule)."""
    return min(decay, (1 + t) / (10 + t)) if warmup else decay


def ema_update(ema, model, decay: float):
    """theta_ema <- decay theta_ema + (1 - decay) theta; buffers (BatchNorm statistics) are copied (with
    `bn_stats_batches`, a checkpoint's EMA then gets its own by `recompute_bn_stats`)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
        for b_ema, b in zip(ema.buffers(), model.buffers()):
            b_ema.copy_(b)


def batch_norms(model) -> list:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_batches(cfg, images, schedule, device) -> list:
    """The fixed training batches [(x_t, t)] BatchNorm statistics are recomputed on: `bn_stats_batches`
    batches of `batch` images (with their flips), t ~ U{0..T-1} and eps, from one CPU generator seeded by
    (seed,) alone, so every checkpoint of a run, resumed or not, on any device, uses the same ones."""
    g = torch.Generator().manual_seed(derive("bn_stats", cfg.seed))
    out = []
    for _ in range(cfg.bn_stats_batches):
        x0 = to_model(images[torch.randint(0, len(images), (cfg.batch,), generator=g)])  # (B, C, H, W)
        if cfg.flip:
            x0 = torch.where((torch.rand(cfg.batch, generator=g) < 0.5)[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, cfg.T, (cfg.batch,), generator=g)
        xt = q_sample(schedule, x0, t, torch.randn(x0.shape, generator=g))
        out.append((xt.to(device).contiguous(memory_format=memory_format(cfg)), t.to(device)))
    return out


@torch.no_grad()
def recompute_bn_stats(model, batches):
    """SWA's update_bn (Izmailov et al. 2018; torch.optim.swa_utils.update_bn) on a diffusion model: reset
    every BatchNorm's running statistics, forward `batches` [(x_t, t)] with BatchNorm in train mode and
    momentum None (running stats = the mean over batches of each batch's mean and unbiased variance), and
    everything else in eval mode (no dropout: the activations the model has when it samples)."""
    norms, was = batch_norms(model), model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for xt, t in batches:
        model(xt, t)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was)


def train(cfg, run_dir, images, *, device, on_log=None, stop_at=None, progress=True, should_stop=None, log=None,
          keep=(), on_checkpoint=None):
    """Train (or resume) the run in `run_dir` on uint8 `images` (N, C, H, W). Returns a dict with the
    model, its EMA, the steps done, and `wall_s` and `steps_timed`: training time and steps summed over
    every segment of a resumed run (kept in the checkpoint, so a killed segment's lost steps are not
    counted twice).

    `on_log(step, means)` is called every ~1% of training with the means since the previous call,
    {"train_loss": the loss trained on, "train_mse": its unweighted MSE}. `stop_at` ends the call after that step
    (tests use it to interrupt); `should_stop()` is polled each step and, when true, checkpoints and
    returns early (the SLURM timeout/preemption path). The checkpoints of the steps in `keep` are never
    pruned; `on_checkpoint(step)` is called on every task after each of them is written (evaluation
    while training goes on), and its time is not counted as training time.
    """
    device = torch.device(device)
    deterministic(device)
    run_dir = Path(run_dir)
    torch.manual_seed(derive("init", cfg.seed))
    model = build_model(cfg).to(device, memory_format=memory_format(cfg))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = OPTIMIZERS[cfg.optimizer](model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warm(cfg, s + 1))
    gen = torch.Generator(device).manual_seed(derive("train_noise", cfg.seed))
    step, total = 0, total_steps(cfg, len(images))

    wall, timed, compiling, loss_sum, loss_n = 0.0, 0, 0.0, 0.0, 0  # totals over earlier segments; loss since the last row
    mse_sum = 0.0  # the unweighted MSE over the same loss_n steps
    state = load_latest(run_dir, device, log=log)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        lr_sched.load_state_dict(state["lr_sched"])
        gen.set_state(state["gen"].cpu())  # map_location moved it; generator states live on the CPU
        step = state["step"]
        wall, timed, loss_sum, loss_n = state["wall_s"], state["steps_timed"], state["loss_sum"], state["loss_n"]
        compiling = state.get("compile_s", 0.0)
        mse_sum = state.get("mse_sum", 0.0 if loss_n == 0 else float("nan"))  # unknown in older checkpoints

    def save():
        if stats_batches:  # every task: each evaluates its own EMA
            recompute_bn_stats(ema, stats_batches)
        if not is_main():
            return
        save_checkpoint(run_dir, step, keep=keep, state={
            "step": step, "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
            "lr_sched": lr_sched.state_dict(), "gen": gen.get_state(), "loss_sum": loss_sum, "loss_n": loss_n,
            "mse_sum": mse_sum,
            "wall_s": wall + time.perf_counter() - t0, "steps_timed": timed + step - start_step,
            "compile_s": compiling + compile_time()})

    def compile_time():  # this segment's first step beyond the mean of its others
        done = step - start_step
        if not cfg.compile or done < 2:
            return 0.0
        return max(0.0, first_s - (time.perf_counter() - t0 - first_s) / (done - 1))

    schedule = make_schedule(cfg.schedule, cfg.T, zero_terminal_snr=cfg.zero_terminal_snr)
    stats_batches = bn_batches(cfg, images, schedule, device) if batch_norms(ema) else []
    tasks, me = world(), rank()
    if cfg.batch % tasks:
        raise ValueError(f"batch {cfg.batch} is not divisible by the {tasks} tasks")
    local = slice(me * cfg.batch // tasks, (me + 1) * cfg.batch // tasks)
    forward = torch.nn.parallel.DistributedDataParallel(model) if tasks > 1 else model
    forward = torch.compile(forward) if cfg.compile else forward
    per_epoch = len(images) // cfg.batch
    if per_epoch < 1:
        raise ValueError(f"batch {cfg.batch} is larger than the {len(images)} training images")
    log_every = max(1, total // 100)
    order_epoch, order = -1, None
    start_step, first_s = step, 0.0
    bar = _progress(total, step, progress and is_main())
    model.train()
    t0 = time.perf_counter()
    while step < total:
        epoch, k = divmod(step, per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(cfg.seed, epoch, len(images))
        torch.manual_seed(derive("dropout", cfg.seed, step, me))
        x0 = to_model(images[order[k * cfg.batch:(k + 1) * cfg.batch][local]]).to(device)  # (B/tasks, C, H, W)
        if cfg.flip:  # every task draws the whole batch's flips, like t and eps
            flips = (torch.rand(cfg.batch, generator=gen, device=device) < 0.5)[local]
            x0 = torch.where(flips[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, cfg.T, (cfg.batch,), generator=gen, device=device)[local]
        noise = torch.randn((cfg.batch, *x0.shape[1:]), generator=gen, device=device)[local]
        xt = q_sample(schedule, x0, t, noise).contiguous(memory_format=memory_format(cfg))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out = forward(xt, t)
        terms = loss_terms(schedule, out.float(), x0, xt, t, noise, prediction=cfg.prediction,
                           variance=cfg.variance, loss=cfg.loss, vlb_weight=cfg.vlb_weight, weighting=cfg.weighting,
                           **{p: getattr(cfg, p) for p in PARAMS[cfg.weighting]})
        loss = terms["loss"].mean()
        value, mse = all_mean(torch.stack([loss.detach(), terms["mse"].mean().detach()])).tolist()
        if not math.isfinite(value):
            raise NonFiniteLoss(step, value)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        lr_sched.step()
        ema_update(ema, model, ema_decay_at(cfg.ema_decay, step + 1, cfg.ema_warmup))
        step += 1
        if step == start_step + 1:
            first_s = time.perf_counter() - t0
        loss_sum, mse_sum, loss_n = loss_sum + value, mse_sum + mse, loss_n + 1
        if step % log_every == 0 or step == total:
            if on_log and is_main():
                on_log(step, {"train_loss": loss_sum / loss_n, "train_mse": mse_sum / loss_n})
            loss_sum, mse_sum, loss_n = 0.0, 0.0, 0
        if step % cfg.checkpoint_every == 0 or step == total or step in keep:
            save()
            if on_checkpoint is not None and step in keep:
                paused = time.perf_counter()
                barrier()  # task 0 has written the checkpoint every task reads
                on_checkpoint(step)
                t0 += time.perf_counter() - paused
        if bar is not None:
            rate = (step - start_step) * cfg.batch / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.0f}", refresh=False)
        if stop_at is not None and step >= stop_at:
            break
        if should_stop is not None and any_true(should_stop(), device):
            if step % cfg.checkpoint_every and step != total:
                save()
            break
    if bar is not None:
        bar.close()
    compiling += compile_time()
    wall, timed = wall + time.perf_counter() - t0, timed + step - start_step
    return {"model": model, "ema": ema, "step": step, "start_step": start_step, "total": total, "wall_s": wall,
            "steps_timed": timed, "compile_s": compiling, "img_per_s": timed * cfg.batch / (wall - compiling) if timed else float("nan")}


def _progress(total, initial, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)
