"""How the tables and figures name what they show: a sampler setting's legend word (`label`) and the axes whose
values the loss figure gives a panel each. Reporting reads the rows and axes.json alone (no registry: that
imports torch): a sampler's word is its registry entry's (core/samplers.py `Sampler.word`), which `ablate
collect` writes into the folder's axes.json (`words`); a sampler without one is shown by its registry name."""

# axes whose values train different targets, each loss on its own scale: one panel per value in the loss figure
OWN_SCALE = ("prediction",)


def label(sampler, steps=None, eta=None, clip_x0=True, spacing="leading", word=None) -> str:
    """The one legend word for a sampler setting, e.g. "DDIM η=0 · 10 steps" or "DDPM · trailing · 100 steps";
    `word` is the sampler's ("DDIM η={eta}": the legend shows its eta), else its name."""
    word = word if isinstance(word, str) and word else str(sampler)
    text = word.replace(" η={eta}", "") if eta is None or eta != eta else word.format(eta=f"{float(eta):g}")
    if clip_x0 is False or clip_x0 == "False":
        text += " · no clip"
    if isinstance(spacing, str) and spacing != "leading":
        text += f" · {spacing}"
    if steps is not None and steps == steps:
        text += f" · {int(steps)} steps"
    return text
