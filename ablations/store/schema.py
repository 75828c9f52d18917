"""The row schema: every number the suite produces is one row with these columns. No torch.

A run folder's rows.jsonl holds RUN_COLUMNS; `ablate collect` attaches SPEC_COLUMNS (the spec, its
scale and seed), the run's axis values (the axes are the registry's, ablations/run/axes.py, which imports torch:
this module does not) and the run's status. The columns are used by the runner (which
writes them), the table (which groups by them), the plots and the report (which label by them).
`read_rows` is the one reader of a rows file: the runner and `collect` see the same rows.
"""
import json
import math
from pathlib import Path

COLUMNS = {
    # run identity (in every row)
    "run_id": "hash of the run's training config; its folder is <runs root>/<run_id>/",
    # what the number is
    "metric": "what was measured (METRICS)",
    "value": "the number",
    "phase": "train or eval: the part of the run that produced it",
    "train_step": "optimizer steps done when it was measured (train rows), or of the checkpoint whose EMA "
                  "weights were scored (eval rows; empty in eval rows from before checkpoints were scored)",
    # the sampler setting (eval rows)
    "sampler": "the sampler: a name in core/samplers.py SAMPLERS",
    "steps": "sampling steps S",
    "eta": "DDIM's eta (0 for the other samplers)",
    "clip_x0": "whether the predicted x0 was clipped to [-1, 1] while sampling, or in the NLL's bound",
    "spacing": "which S of the T timesteps are kept: leading | trailing | linspace (Lin et al. 2023, Table 2); "
               "NLL: how its strata divide the T timesteps (geometric; empty when exact)",
    "nfe": "model evaluations per image: steps, or 2 steps - 1 for heun",
    # the evaluation protocol (eval rows)
    "n": "images the number is computed over (generated images for FID; test images for NLL; batch for train)",
    "extractor": "FID feature extractor",
    "reference": "the real images compared against: dataset:split:count (solver_rms: the reference sampler, ddim:T)",
    "sample_seed": "seed of x_T and the sampler noise (per image), or of the NLL timesteps and noise",
    "strata": "NLL: timesteps per image, one per stratum; equal to T when exact",
    "t": "x0_rms, nll_term_bpd: the timestep of the noisy image x_t the network denoised (0-indexed, as the "
         "network sees it)",
    # provenance
    "device": "torch device", "torch": "torch version", "commit": "git commit of the code (+dirty)",
    "host": "machine", "cpu": "CPU model and cores (or the GPU's name)", "timestamp": "unix time the row was written",
    # the append that wrote it (run folder only, not in rows.csv): a torn append is told from a whole one
    "append_id": "id shared by the rows written in one append (empty in rows from before it existed)",
    "append_rows": "how many rows that append wrote: fewer in the file means the append was cut short",
}
SETTING = ("sampler", "steps", "eta", "clip_x0", "spacing")  # a sampler setting's fields (config.py `Setting`; tested)
PROTOCOL = ("n", "extractor", "reference", "sample_seed", "strata", "t")
OPTIONAL = ("t",)  # key columns added after rows were first written: a row without one reads it as None
PROVENANCE = ("device", "torch", "commit", "host", "cpu", "timestamp")
RUN_COLUMNS = tuple(COLUMNS)
# A row is identified by these (with run_id); a row with the same key is never written twice.
EVAL_KEY = ("metric", "phase", *SETTING, *PROTOCOL, "train_step")
IDENTITY = ("run_id", *EVAL_KEY)  # any row's, train rows included: `collect` keeps one per identity
PHASES = ("train", "eval")
SPEC_COLUMNS = ("ablation", "scale", "seed")  # + the axes; attached by `ablate collect`
STATUS_COLUMNS = ("status", "reason")

METRICS = {
    "train_loss": "mean training loss over the steps since the previous row (weighted, where `weighting` weights it)",
    "train_mse": "mean unweighted MSE of the training target over the same steps as train_loss",
    "train_img_per_s": "training images/s over all segments of a resumed run, compile time excluded",
    "train_wall_s": "training wall seconds to the row's train_step, summed over all segments",
    "train_images": "training images seen to the row's train_step (steps x batch)",
    "train_flops": "training FLOPs to the row's train_step: images x the U-Net's forward + backward per image",
    "compile_s": "torch.compile seconds: the first compiled step's excess (train), or the first forward (eval)",
    "peak_mem_mb": "peak GPU memory allocated, or the process's peak RSS on CPU (MB), per phase",
    "fid": "Frechet distance in the extractor's feature space",
    "kid": "kernel distance (unbiased MMD^2, cubic kernel) in the same features, mean over 100 subsets of n/2 images",
    "kid_std": "std of KID over those subsets: the spread from drawing n/2 of the n samples (and as many reference "
               "images), not a confidence interval of the model's KID",
    "precision": "share of generated images inside the real images' 3-NN balls, same features (Kynkaenniemi 2019)",
    "recall": "share of real images inside the generated images' 3-NN balls; n of each side",
    "solver_rms": "mean per-image RMS distance ([-1, 1] units) from DDIM eta=0 over all T steps, same x_T",
    "sample_img_per_s": "generated images/s", "nfe_per_s": "image-model evaluations/s",
    "sample_wall_s": "seconds to generate the n images", "fid_wall_s": "seconds for the FID pass",
    "nll_bpd": "negative log-likelihood bound, bits/dim", "nll_wall_s": "seconds for the NLL pass",
    "prc_wall_s": "seconds for the precision/recall pass (features and 3-NN balls)",
    "denoise_wall_s": "seconds for the denoising pass (x0_rms and nll_term_bpd at every t of denoise_t)",
    "x0_rms": "mean per-image RMS error ([-1, 1] units) of the network's x0 estimate from x_t at timestep t "
              "(clipped as the samplers clip it: clip_x0), on the first nll_images test images",
    "nll_term_bpd": "the bound's term at timestep t in bits/dim (the decoder's NLL at t = 0, the step's KL above), "
                    "on the same images and x_t as x0_rms; nll_bpd sums these over all T, plus the prior",
}

CURVES = ("train_loss", "train_mse")  # logged every ~1% of training: curves, not summaries
DENOISING = ("x0_rms", "nll_term_bpd")  # the rows of each timestep of eval.denoise_t, keyed by `t`


def row(run_id: str, metric: str, value, **cols) -> dict:
    """A complete row: every column present (None where it does not apply)."""
    unknown = set(cols) - set(COLUMNS)
    if unknown or metric not in METRICS:
        raise ValueError(f"not a row column: {sorted(unknown)}" if unknown else f"unknown metric {metric!r}")
    return {**dict.fromkeys(RUN_COLUMNS), **cols, "run_id": run_id, "metric": metric, "value": value}


def problem(r, known: bool = True) -> str | None:
    """Why a parsed line is not a row, or None when it is one: an object with every IDENTITY column, a
    known metric and phase, and a value that is a finite number or NaN. known=False accepts any metric
    and phase name: the test of a row another version of the suite wrote (`parse`'s "foreign")."""
    if not isinstance(r, dict):
        return "not a JSON object"
    lacking = [c for c in (*IDENTITY, "value") if c not in r and c not in OPTIONAL]
    if lacking:
        return f"no {', '.join(lacking)}"
    if not (isinstance(r["metric"], str) and isinstance(r["phase"], str)):
        return "metric and phase are not names"
    if known and (r["metric"] not in METRICS or r["phase"] not in PHASES):
        return f"unknown metric {r['metric']!r}" if r["metric"] not in METRICS else f"unknown phase {r['phase']!r}"
    v, n = r["value"], r.get("append_rows")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isinf(v):
        return f"value {v!r} is not a finite number or NaN"
    if r.get("append_id") is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        return f"append_rows {n!r} is not a count"
    return None


WHOLE = ("row", "foreign")  # the kinds of `parse` that are whole rows


def parse(data: bytes) -> list[tuple[bytes, str, dict | None]]:
    """Each line of a rows file as (line, kind, object): kind "row"; "foreign", a whole row of a metric or
    phase this suite does not know (written by a newer one: kept in the file, not read); "partial", a row
    of an append that was cut short (fewer lines carry its append_id than its append_rows says); or
    "bad", a line that is not a row (half-written, not JSON, or failing `problem`). Rows with no
    append_id are whole."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for line in lines:
        try:
            obj = json.loads(line.decode("utf-8", errors="replace"))
        except ValueError:
            obj = None
        kind = "row" if problem(obj) is None else "foreign" if problem(obj, known=False) is None else "bad"
        out.append((line, kind, obj))
    written = {}
    for _, kind, obj in out:
        if kind in WHOLE and obj.get("append_id") is not None:
            written[obj["append_id"]] = written.get(obj["append_id"], 0) + 1
    return [(line, "partial", obj) if kind in WHOLE and obj.get("append_id") is not None
            and written[obj["append_id"]] < obj["append_rows"] else (line, kind, obj)
            for line, kind, obj in out]


def read_lines(path) -> list[tuple[bytes, str, dict | None]]:
    """`parse` of a rows file; none when there is no file."""
    try:
        return parse(Path(path).read_bytes())
    except FileNotFoundError:
        return []


def rows_of(lines) -> tuple[list[dict], int]:
    """(the rows of parsed lines, how many lines were skipped: not rows, or rows of a cut append). Whole
    rows of a metric this suite does not know ("foreign") are neither read nor counted."""
    return [obj for _, kind, obj in lines if kind == "row"], sum(kind not in WHOLE for _, kind, _ in lines)


def read_rows(path) -> tuple[list[dict], int]:
    """`rows_of` a rows file."""
    return rows_of(read_lines(path))


def foreign_metrics(lines) -> set[str]:
    """The metrics of the whole rows among parsed lines that this suite does not know (a newer suite's)."""
    return {obj["metric"] for _, kind, obj in lines if kind == "foreign"}


def key(r: dict) -> tuple:
    """The identity of an eval row within its run."""
    return tuple(_norm(r.get(c)) for c in EVAL_KEY)


def identity(r: dict) -> tuple:
    """The identity of any row (IDENTITY): `collect` keeps one row per identity."""
    return tuple(_norm(r.get(c)) for c in IDENTITY)


def _norm(v):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    return float(v) if v == v else None  # ints and floats compare equal after a CSV round trip

