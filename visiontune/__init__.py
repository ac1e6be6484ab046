"""visiontune: transfer learning for image classification, fast on the machine you have.

The public surface; importing it does no heavy work (torch loads on first use).
"""

__version__ = "0.1.0"

__all__ = [
    "TrainConfig",
    "__version__",
    "advise",
    "evaluate",
    "export",
    "fit",
    "fit_ensemble",
    "list_backbones",
    "load",
    "predict",
    "resume",
]


def __getattr__(name):
    # Lazy re-exports keep `visiontune --help` and `import visiontune` fast.
    if name in ("fit", "fit_ensemble", "load", "evaluate", "predict", "advise", "resume", "export"):
        from . import api

        return getattr(api, name)
    if name == "list_backbones":
        from .backbones import list_backbones

        return list_backbones
    if name == "TrainConfig":
        from .config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'visiontune' has no attribute {name!r}")
