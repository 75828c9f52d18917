"""A spec's eval block: the EvalConfig checked against every run it scores (extractors, image counts, strata,
eval_at), and its `[[eval.setting]]` tables expanded into sampler settings. Errors name the file and key that
set the offending value (ablations/grid/checks.py)."""
from dataclasses import replace

import torch

from ablations.grid.checks import SpecError, check_value, maker, rule, typed
from ablations.run.tables import known
from ablations.run.config import EVAL_FIELDS, SETTING_KEYS, EvalConfig, Setting, total_steps
from ablations.run.shapes import SIZES
from core.registry import lookup
from core.samplers import SAMPLERS, check_start
from core.schedules import check_spacing, spaced_timesteps


def eval_config(values, runs) -> EvalConfig:
    """EvalConfig from {field: (value, file, key)}, checked against every run; `setting` expands into
    the Setting list."""
    checked = {k: check_value(key, k, v, EVAL_FIELDS[k].default, maker(path))
               for k, (v, path, key) in values.items() if k != "setting"}
    ev = EvalConfig(**checked)

    def err(field, msg):
        _, path, key = values.get(field, (None, None, None))
        return maker(path)(key, msg) if path else SpecError(f"default of eval '{field}' ({msg})")

    extractors = _extractors(ev, err)
    _fits_runs(ev, runs, extractors, err)
    if "inception-v3-compat" in extractors:
        where = "fid_extractor" if ev.fid_extractor == "inception-v3-compat" else "extra_extractors"
        _check_inception(ev.inception_weights, lambda msg: err(
            "inception_weights" if "inception_weights" in values else where, msg))
    if "setting" not in values:
        return ev
    tables, path, key = values["setting"]
    settings, last_only = _settings(tables, key, maker(path), ev, runs)
    return replace(ev, settings=tuple(settings), last_only=tuple(last_only))


def _extractors(ev, err) -> tuple:
    """(fid_extractor, *extra_extractors): known, distinct, and with their weights where they need them."""
    from ablations.metrics import classifier
    from ablations.metrics.fidelity import EXTRACTORS, FMNIST_ONLY
    rule(err, "fid_extractor", lookup, EXTRACTORS, ev.fid_extractor, "fid_extractor")
    for name in ev.extra_extractors:
        rule(err, "extra_extractors", lookup, EXTRACTORS, name, "extra_extractors")
    extractors = (ev.fid_extractor, *ev.extra_extractors)
    for name in extractors:
        if name in FMNIST_ONLY and not classifier.WEIGHTS[name][0].exists():
            raise err("fid_extractor" if name == ev.fid_extractor else "extra_extractors",
                      f"{name!r} needs its weights at {classifier.WEIGHTS[name][0]}, which is missing; restore it "
                      f"from git or retrain it with `ablate classifier`")
    if len(set(extractors)) != len(extractors):
        raise err("extra_extractors", f"{list(ev.extra_extractors)} repeats an extractor of {list(extractors)} "
                                      f"(fid_extractor first); valid: distinct names of {sorted(EXTRACTORS)}")
    return extractors


def _fits_runs(ev, runs, extractors, err):
    """The image counts, strata, extractors and eval_at fit every run's dataset, T and training steps."""
    from ablations.metrics.fidelity import FMNIST_ONLY
    for run in runs:
        cfg = run.config
        for name in extractors:
            if name in FMNIST_ONLY and cfg.dataset != "fashion_mnist":
                raise err("fid_extractor" if name == ev.fid_extractor else "extra_extractors",
                          f"{name!r} features only fit dataset 'fashion_mnist', but run {run.run_id} trains on "
                          f"{cfg.dataset!r}; valid choice for it: 'inception-v3-compat'")
        size = SIZES[cfg.dataset]
        if ev.fid_reference_n > size[ev.fid_reference]:
            most = size[ev.fid_reference]
            raise err("fid_reference_n", f"{ev.fid_reference_n} is more than the {most} images of "
                                         f"{cfg.dataset}'s {ev.fid_reference!r} split; valid: 0..{most}")
        if ev.nll_images > size["test"]:
            raise err("nll_images", f"{ev.nll_images} is more than the {size['test']} test images of {cfg.dataset}; "
                                    f"valid: 1..{size['test']}")
        if ev.nll_strata > cfg.T:
            raise err("nll_strata", f"{ev.nll_strata} strata for T={cfg.T} (run {run.run_id}); valid: 0..{cfg.T}")
        if list(ev.denoise_t) != sorted(set(ev.denoise_t)) or any(not 0 <= t < cfg.T for t in ev.denoise_t):
            raise err("denoise_t", f"{list(ev.denoise_t)} must be distinct timesteps in ascending order within "
                                   f"0..{cfg.T - 1} (run {run.run_id} has T={cfg.T}); valid: e.g. [0, {cfg.T // 2}]")
    if ev.grid_images > ev.fid_samples:
        raise err("grid_images", f"{ev.grid_images} is more than fid_samples={ev.fid_samples}; "
                                 f"valid: 1..{ev.fid_samples}")
    if ev.solver_images > ev.fid_samples:
        raise err("solver_images", f"{ev.solver_images} is more than fid_samples={ev.fid_samples}; "
                                   f"valid: 0..{ev.fid_samples}")
    for run in runs:
        total = total_steps(run.config, SIZES[run.config.dataset]["train"])
        if list(ev.eval_at) != sorted(set(ev.eval_at)) or any(not 1 <= s <= total for s in ev.eval_at):
            raise err("eval_at", f"{list(ev.eval_at)} must be distinct training steps in ascending order within "
                                 f"1..{total} (run {run.run_id} trains {total} steps); valid: e.g. "
                                 f"[{max(1, total // 4)}, {max(1, total // 2)}, {total}]")


def _settings(tables, key, err, ev, runs) -> tuple[list[Setting], list[Setting]]:
    """(every setting, those with `curve = false`: scored at the last checkpoint only)."""
    typed(tables, list, key, err)
    settings, last_only = [], []
    for i, s in enumerate(tables):
        where = f"{key}[{i}]"
        typed(s, dict, where, err)
        known(s, SETTING_KEYS, where + ".", err)
        name = check_value(f"{where}.sampler", "sampler", s.get("sampler"), "", err)
        lists = {k: s.get(k, d) for k, d in (("steps", [50]), ("eta", [0.0]), ("clip_x0", [ev.clip_x0]),
                                              ("spacing", ["leading"]))}
        lists = {k: v if isinstance(v, list) else [v] for k, v in lists.items()}
        for axis, kind in (("steps", int), ("eta", float), ("clip_x0", bool), ("spacing", str)):
            if not lists[axis]:
                raise err(f"{where}.{axis}", "empty list; give at least one value")
            lists[axis] = [typed(float(v) if kind is float and type(v) is int else v, kind, f"{where}.{axis}", err)
                           for v in lists[axis]]
        for sp in lists["spacing"]:
            check_value(f"{where}.spacing", "spacing", sp, "", err)
        for st in lists["steps"]:
            bad = [r for r in runs if not 1 <= st <= r.config.T]
            if bad:
                raise err(f"{where}.steps", f"steps {st} is outside 1..T={bad[0].config.T} of run {bad[0].run_id}; "
                                            f"valid choices: 1..{bad[0].config.T}")
        takes_eta = SAMPLERS[name].takes_eta  # its registry entry (core/samplers.py)
        for eta in lists["eta"]:
            if not 0.0 <= eta <= 1.0 or (not takes_eta and eta != 0):
                raise err(f"{where}.eta", f"eta {eta!r} is invalid for sampler {name!r}; valid choices: "
                                          + ("a number in [0, 1]" if takes_eta else f"0 ({name} has no eta)"))
        _zero_snr_rules(name, lists, runs, f"{where}.spacing", err)
        these = [Setting(name, st, eta, clip, sp) for st in lists["steps"] for eta in lists["eta"]
                 for clip in lists["clip_x0"] for sp in lists["spacing"]]
        settings += these
        if not typed(s.get("curve", True), bool, f"{where}.curve", err):
            last_only += these
    if len(set(settings)) != len(settings):
        raise err(key, f"duplicate sampler settings in {[tuple(s) for s in settings]}")
    if not settings:
        raise err(key, "no sampler settings; give at least one [[eval.setting]] table")
    return settings, last_only


def check_tables(tables, key, err, ev):
    """A list of [[eval.setting]] tables checked as tables, with no run to check them against (a scale's that
    is not run, or the spec's that the scale run replaces)."""
    _settings(tables, key, err, ev, runs=())


def _zero_snr_rules(sampler, lists, runs, key, err):
    """Core's rules for a setting on a zero terminal SNR run: no spacing that places sigmas
    (`check_spacing`), and no sampler that runs in sigma from a kept t = T-1 (`check_start`)."""
    for run in (r for r in runs if r.config.zero_terminal_snr):
        T = run.config.T
        for spacing in dict.fromkeys(lists["spacing"]):
            try:
                check_spacing(spacing, True)
                for steps in lists["steps"]:
                    check_start(sampler, T - 1 in spaced_timesteps(T, steps, spacing))
            except ValueError as e:
                raise err(key, f"{e} (spacing {spacing!r}, zero terminal SNR run {run.run_id})") from None


def _check_inception(path, err):
    """The Inception weights must exist and load, or FID fails after training."""
    from ablations.metrics.fidelity import InceptionWeightsMissing, inception_weights
    try:
        found = inception_weights(path or None)
    except InceptionWeightsMissing as e:
        raise err(str(e)) from None
    try:
        torch.load(found, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise err(f"{found} is not a loadable weights file ({type(e).__name__}: {e}); "
                                       f"copy the file again or point inception_weights at a good copy") from None
