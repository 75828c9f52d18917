"""One lookup for every ablation axis, so every bad name fails the same way."""


def lookup(registry: dict, name, axis: str):
    """Return `registry[name]`, or raise ValueError naming the axis, the value and the valid choices."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        choices = ", ".join(repr(k) for k in registry)
        raise ValueError(f"unknown {axis} {name!r}; valid choices: {choices}") from None
