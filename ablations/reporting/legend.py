"""How the tables and figures name what they show: a sampler setting's legend word (`label`) and the axes whose
values the loss figure gives a panel each. Reporting's words, read from the rows alone (no registry: that
imports torch); a sampler without a word here is shown by its registry name."""

# a sampler's legend word where it is not its name; "{eta}" where the legend shows its eta (the sampler takes one)
WORDS = {"ddpm": "DDPM", "ddim": "DDIM η={eta}", "dpmpp_2m": "DPM-Solver++(2M)", "heun": "Heun"}

# axes whose values train different targets, each loss on its own scale: one panel per value in the loss figure
OWN_SCALE = ("prediction",)


def label(sampler, steps=None, eta=None, clip_x0=True, spacing="leading") -> str:
    """The one legend word for a sampler setting, e.g. "DDIM η=0 · 10 steps" or "DDPM · trailing · 100 steps"."""
    word = WORDS.get(sampler, str(sampler))
    text = word.replace(" η={eta}", "") if eta is None or eta != eta else word.format(eta=f"{float(eta):g}")
    if clip_x0 is False or clip_x0 == "False":
        text += " · no clip"
    if isinstance(spacing, str) and spacing != "leading":
        text += f" · {spacing}"
    if steps is not None and steps == steps:
        text += f" · {int(steps)} steps"
    return text
