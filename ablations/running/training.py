"""The training loop (Ho et al. 2020, Alg. 1): t ~ U{0..T-1}, eps ~ N(0, I), minimise the chosen loss.

Determinism: the data order of epoch e is a permutation seeded by (seed, e), and dropout is
reseeded from (seed, step, rank) every step, so neither needs state; on CUDA only deterministic
kernels run; t and eps come from one
generator whose state is checkpointed with the model, EMA, optimizer and lr schedule (every seed
comes from ablations/run/seeds.py). A run resumed
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
import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ablations.run.axes import OPTIMIZERS, keywords
from ablations.run.config import total_steps
from ablations.run.data import epoch_order, to_model
from ablations.run.model import build_model, run_schedule
from ablations.run.seeds import derive
from ablations.store.checkpoint import load_latest, save_checkpoint
from ablations.running.parallel import all_mean, any_true, barrier, is_main, rank, world
from core.diffusion import q_sample
from core.losses import loss_terms

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


def memory_format(cfg):
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


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
    returns early (the SLURM timeout/preemption path). The checkpoints of the steps in `keep` are written
    and never pruned; `keep` may be a function, asked at every step, when other specs can add steps while
    the run trains (`layout.asked`). `on_checkpoint(step)` is called on every task after each of them is
    written (evaluation while training goes on), and its time is not counted as training time.
    """
    device = torch.device(device)
    deterministic(device)
    run_dir = Path(run_dir)
    st = start(cfg, run_dir, device, log)
    schedule = run_schedule(cfg)
    stats_batches = bn_batches(cfg, images, schedule, device) if batch_norms(st.ema) else []
    local = task_slice(cfg)
    forward = torch.nn.parallel.DistributedDataParallel(st.model) if world() > 1 else st.model
    forward = torch.compile(forward) if cfg.compile else forward
    per_epoch = steps_per_epoch(cfg, len(images))
    total, loss_kw = total_steps(cfg, len(images)), keywords(cfg, loss_terms)
    log_every, order_epoch, order = max(1, total // 100), -1, None
    bar = _progress(total, st.step, progress and is_main())
    st.model.train()
    seg = Segment(st.step, time.perf_counter())
    kept = keep if callable(keep) else (lambda: keep)
    while st.step < total:
        epoch, k = divmod(st.step, per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(cfg.seed, epoch, len(images))
        torch.manual_seed(derive("dropout", cfg.seed, st.step, rank()))
        x0, t, noise = draw_batch(cfg, images[order[k * cfg.batch:(k + 1) * cfg.batch][local]], local, st.gen,
                                  device)
        value, mse = update(cfg, st, forward, schedule, x0, t, noise, loss_kw)
        st.step += 1
        if st.step == seg.start + 1:
            seg.first_s = time.perf_counter() - seg.t0
        record_loss(st, value, mse, last=st.step % log_every == 0 or st.step == total, on_log=on_log)
        keep_now = kept()
        save = functools.partial(save_state, cfg, run_dir, st, seg, keep_now, stats_batches)
        if st.step % cfg.checkpoint_every == 0 or st.step == total or st.step in keep_now:
            save()
            if on_checkpoint is not None and st.step in keep_now:
                _pause(seg, on_checkpoint, st.step)
        _show(bar, cfg, st, seg, value)
        if stop_at is not None and st.step >= stop_at:
            break
        if should_stop is not None and any_true(should_stop(), device):
            if st.step % cfg.checkpoint_every and st.step != total:
                save()
            break
    if bar is not None:
        bar.close()
    return finish(cfg, st, seg, total)


@dataclass
class State:
    """A run's training state: what its checkpoint holds (the counters summed over earlier segments)."""

    model: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    lr_sched: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator  # t, eps and flips
    step: int = 0
    wall: float = 0.0  # training seconds of the earlier segments
    timed: int = 0  # steps they timed
    compiling: float = 0.0  # their compile seconds
    loss_sum: float = 0.0  # the loss since the last logged row
    mse_sum: float = 0.0  # the unweighted MSE over the same loss_n steps
    loss_n: int = 0


@dataclass
class Segment:
    """This call's share of training: its first step, its start time, and its first step's seconds."""

    start: int
    t0: float
    first_s: float = 0.0


def start(cfg, run_dir, device, log) -> State:
    """The model (seeded by the run seed), its EMA, the optimizer, the lr warm-up and the noise generator,
    resumed from the run's latest checkpoint when there is one."""
    torch.manual_seed(derive("init", cfg.seed))
    model = build_model(cfg).to(device, memory_format=memory_format(cfg))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = OPTIMIZERS[cfg.optimizer](model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warm(cfg, s + 1))
    st = State(model, ema, opt, lr_sched, torch.Generator(device).manual_seed(derive("train_noise", cfg.seed)))
    saved = load_latest(run_dir, device, log=log)
    if saved is not None:
        st.model.load_state_dict(saved["model"])
        st.ema.load_state_dict(saved["ema"])
        st.opt.load_state_dict(saved["opt"])
        st.lr_sched.load_state_dict(saved["lr_sched"])
        st.gen.set_state(saved["gen"].cpu())  # map_location moved it; generator states live on the CPU
        st.step = saved["step"]
        st.wall, st.timed = saved["wall_s"], saved["steps_timed"]
        st.loss_sum, st.loss_n = saved["loss_sum"], saved["loss_n"]
        st.compiling = saved.get("compile_s", 0.0)
        st.mse_sum = saved.get("mse_sum", 0.0 if st.loss_n == 0 else float("nan"))  # unknown in older checkpoints
    return st


def task_slice(cfg) -> slice:
    """This task's slice of the global batch."""
    tasks, me = world(), rank()
    if cfg.batch % tasks:
        raise ValueError(f"batch {cfg.batch} is not divisible by the {tasks} tasks")
    return slice(me * cfg.batch // tasks, (me + 1) * cfg.batch // tasks)


def steps_per_epoch(cfg, n_train: int) -> int:
    if n_train // cfg.batch < 1:
        raise ValueError(f"batch {cfg.batch} is larger than the {n_train} training images")
    return n_train // cfg.batch


def draw_batch(cfg, images, local, gen, device):
    """(x0, t, eps) of this task's slice of one global batch of uint8 `images`: its flips, t ~ U{0..T-1}
    and eps ~ N(0, I) drawn for the whole batch by every task (Ho et al. 2020, Alg. 1, lines 2-4)."""
    x0 = to_model(images).to(device)  # (B/tasks, C, H, W)
    if cfg.flip:  # every task draws the whole batch's flips, like t and eps
        flips = (torch.rand(cfg.batch, generator=gen, device=device) < 0.5)[local]
        x0 = torch.where(flips[:, None, None, None], x0.flip(-1), x0)
    t = torch.randint(0, cfg.T, (cfg.batch,), generator=gen, device=device)[local]
    noise = torch.randn((cfg.batch, *x0.shape[1:]), generator=gen, device=device)[local]
    return x0, t, noise


def update(cfg, st: State, forward, schedule, x0, t, noise, loss_kw) -> tuple[float, float]:
    """One optimizer step on the loss at x_t = q_sample(x0, t, eps) (Alg. 1, line 5), then the EMA
    update. Returns (loss, unweighted MSE), averaged over tasks."""
    xt = q_sample(schedule, x0, t, noise).contiguous(memory_format=memory_format(cfg))
    with torch.autocast(xt.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        out = forward(xt, t)
    terms = loss_terms(schedule, out.float(), x0, xt, t, noise, **loss_kw)
    loss = terms["loss"].mean()
    value, mse = all_mean(torch.stack([loss.detach(), terms["mse"].mean().detach()])).tolist()
    if not math.isfinite(value):
        raise NonFiniteLoss(st.step, value)
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(st.model.parameters(), cfg.grad_clip)
    st.opt.step()
    st.lr_sched.step()
    ema_update(st.ema, st.model, ema_decay_at(cfg.ema_decay, st.step + 1, cfg.ema_warmup))
    return value, mse


def record_loss(st: State, value, mse, *, last: bool, on_log):
    """Add a step's loss and MSE to the means since the last row; at a `last` step report them (task 0)."""
    st.loss_sum, st.mse_sum, st.loss_n = st.loss_sum + value, st.mse_sum + mse, st.loss_n + 1
    if last:
        if on_log and is_main():
            on_log(st.step, {"train_loss": st.loss_sum / st.loss_n, "train_mse": st.mse_sum / st.loss_n})
        st.loss_sum, st.mse_sum, st.loss_n = 0.0, 0.0, 0


def compile_time(cfg, st: State, seg: Segment) -> float:
    """This segment's first step beyond the mean of its others (0 when eager)."""
    done = st.step - seg.start
    if not cfg.compile or done < 2:
        return 0.0
    return max(0.0, seg.first_s - (time.perf_counter() - seg.t0 - seg.first_s) / (done - 1))


def save_state(cfg, run_dir, st: State, seg: Segment, keep, stats_batches):
    """Checkpoint the state (task 0), after every task gives its EMA its own BatchNorm statistics."""
    if stats_batches:  # every task: each evaluates its own EMA
        recompute_bn_stats(st.ema, stats_batches)
    if not is_main():
        return
    save_checkpoint(run_dir, st.step, keep=keep, state={
        "step": st.step, "model": st.model.state_dict(), "ema": st.ema.state_dict(), "opt": st.opt.state_dict(),
        "lr_sched": st.lr_sched.state_dict(), "gen": st.gen.get_state(), "loss_sum": st.loss_sum,
        "loss_n": st.loss_n, "mse_sum": st.mse_sum,
        "wall_s": st.wall + time.perf_counter() - seg.t0, "steps_timed": st.timed + st.step - seg.start,
        "compile_s": st.compiling + compile_time(cfg, st, seg)})


def finish(cfg, st: State, seg: Segment, total: int) -> dict:
    """train's result: the models, the steps, and the time and steps summed over every segment."""
    compiling = st.compiling + compile_time(cfg, st, seg)
    wall, timed = st.wall + time.perf_counter() - seg.t0, st.timed + st.step - seg.start
    return {"model": st.model, "ema": st.ema, "step": st.step, "start_step": seg.start, "total": total,
            "wall_s": wall, "steps_timed": timed, "compile_s": compiling,
            "img_per_s": timed * cfg.batch / (wall - compiling) if timed else float("nan")}


def _pause(seg: Segment, on_checkpoint, step):
    """Call on_checkpoint(step) on every task once task 0 has written it; its time is not training time."""
    paused = time.perf_counter()
    barrier()  # task 0 has written the checkpoint every task reads
    on_checkpoint(step)
    seg.t0 += time.perf_counter() - paused


def _show(bar, cfg, st: State, seg: Segment, value):
    if bar is not None:
        rate = (st.step - seg.start) * cfg.batch / (time.perf_counter() - seg.t0)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.0f}", refresh=False)


def _progress(total, initial, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)
