"""The checks every part of a spec shares: each raises the spec's error (`err(key, message)`), which names
the file, the key and the bad value."""


def known(table, allowed, prefix, err):
    """Every key of `table` is in `allowed`; else the first unknown one, under `prefix`, with the valid keys."""
    for key in table:
        if key not in allowed:
            raise err(prefix + key, f"unknown key {key!r}; valid keys: {', '.join(sorted(allowed))}")


def typed(value, kind, key, err):
    """`value` if it is a `kind` (a bool is no int or float), else the error naming what it is."""
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if not ok:
        raise err(key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value
