"""The checks every part of a spec shares: each raises the spec's error (`err(key, message)`), which names
the file, the key and the bad value."""
import math

from ablations.run.axes import AXES
from ablations.run.config import LIMITS, RANGES
from core.registry import lookup

INT_MAX = 2**31 - 1  # any integer field: a C int holds it
CHOICES = {name: axis.choices for name, axis in AXES.items()}  # field -> its registry (ablations/run/axes.py)


class SpecError(ValueError):
    """A malformed spec: names the file, the key, the bad value and the valid choices."""


def errors(path, overrides=()):
    """The error factory of a file: an error on a key an override set (or a key above or below it)
    names the override."""
    def err(key, msg):
        given = next((o for o in overrides if _related(o.split("=", 1)[0], key)), None)
        return SpecError(f"{path}: " + (f"--set {given}: " if given else "") + f"key '{key}': {msg}")
    return err


def _related(override_key, key) -> bool:
    return any(a == b or a.startswith((b + ".", b + "["))
               for a, b in ((key, override_key), (override_key, key)))


def maker(where):
    """An error factory from what a value remembers of where it came from: a file, or a factory."""
    return where if callable(where) else errors(where)


def check_value(key, field_name, value, default, err):
    """Type-check one config value against its field's default, and check names against registries."""
    if isinstance(default, tuple):
        kind = str if field_name == "extra_extractors" else int
        if not isinstance(value, list) or not all(type(v) is kind for v in value):
            raise err(key, f"expected a list of {'names' if kind is str else 'integers'}, got {value!r}")
        value = tuple(value)
    else:
        if isinstance(default, float) and type(value) is int:
            value = float(value)
        typed(value, type(default), key, err)
    if field_name in CHOICES:
        try:
            lookup(CHOICES[field_name], value, field_name)
        except ValueError as e:
            raise err(key, str(e)) from None
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, float) and not math.isfinite(v):
            raise err(key, f"{value!r} is not a finite number; valid: {RANGES.get(field_name, (0, 'a number'))[1]}")
        top = LIMITS.get(field_name, INT_MAX)
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > top:
            raise err(key, f"{value!r} is out of range; at most {top:,} (what a run can reach and the machine holds)")
    if field_name in RANGES and not RANGES[field_name][0](value):
        raise err(key, f"{value!r} is out of range; valid: {RANGES[field_name][1]}")
    return value


def rule(err, key, check, *args):
    """A cross-field rule of core (defined once, beside the math it protects): its ValueError becomes
    the spec's error on `key`, naming the file and the value."""
    try:
        check(*args)
    except ValueError as e:
        raise err(key, str(e)) from None


def typed(value, kind, key, err):
    """`value` if it is a `kind` (a bool is no int or float), else the error naming what it is."""
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if not ok:
        raise err(key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value
