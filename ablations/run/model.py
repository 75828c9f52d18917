"""A run's model and noise schedule, built from its config: its axes and parameters
(`ablations.run.axes.keywords`), the U-Net sized for its dataset (`ablations.run.shapes.SHAPES`)."""
from ablations.run.axes import keywords
from ablations.run.shapes import SHAPES
from core.diffusion import out_channels
from core.schedules import make_schedule
from core.unet import UNet

# the config fields build_model reads: runs equal in these share a model shape
ARCHITECTURE = ("dataset", "variance", "model_channels", "mults", "res_blocks", "attention", "heads", "dropout",
                "norm", "groups", "conditioning")


def architecture(cfg) -> tuple:
    """The values of cfg's ARCHITECTURE fields: a key for what depends only on the model's shape."""
    return tuple(getattr(cfg, f) for f in ARCHITECTURE)


def build_model(cfg) -> UNet:
    """The run's U-Net: its axes and parameters (`keywords`), sized for its dataset."""
    C, H, _ = SHAPES[cfg.dataset]
    return UNet(channels=C, out_channels=out_channels(C, cfg.variance), resolution=H, **keywords(cfg, UNet))


def run_schedule(cfg):
    """The run's noise schedule, from its axes and parameters (`keywords`)."""
    return make_schedule(**keywords(cfg, make_schedule))
