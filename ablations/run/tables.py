"""Checks of the TOML tables people write (specs, notes files), with no torch: each error names the key and the
valid choices; `err(key, why)` makes the caller's error, which names the file."""


def known(table, allowed, prefix, err):
    """Every key of `table` is in `allowed`; else the first unknown one, under `prefix`, with the valid keys."""
    for key in table:
        if key not in allowed:
            raise err(prefix + key, f"unknown key {key!r}; valid keys: {', '.join(sorted(allowed))}")


def choice(value, choices, key, err):
    """`value`, if it is one of `choices`."""
    if value not in choices:
        raise err(key, f"{value!r} is not one of the valid choices: {', '.join(map(repr, choices))}")
    return value


def cell(table, key, columns, err, empty=False) -> dict:
    """A cell: a table of column = one value, each column one of `columns` (empty only if `empty`)."""
    if not isinstance(table, dict) or not (table or empty):
        raise err(key, f"expected a table of column = value, got {table!r}")
    for col, value in table.items():
        choice(col, columns, f"{key}.{col}", err)
        if isinstance(value, (dict, list)):
            raise err(f"{key}.{col}", f"expected one value, got {value!r}")
    return dict(table)
