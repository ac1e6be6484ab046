"""visiontune: transfer learning for image classification, fast on the machine you have.

The public surface, exactly the Python API the README documents. Importing it does no heavy
work: torch loads on first use of a workflow.
"""

from ._version import __version__

# Workflows (visiontune.api) and the one config class, imported on first use.
_API = (
    "advise",
    "apply_fixes",
    "audit",
    "augment_preview",
    "check",
    "evaluate",
    "export",
    "extract",
    "fit",
    "fit_ensemble",
    "load",
    "predict",
    "resume",
    "similar",
)

__all__ = ["TrainConfig", "__version__", "list_backbones", *_API]


def __getattr__(name):
    # Lazy re-exports keep `visiontune --help` and `import visiontune` fast.
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "list_backbones":
        from .backbones import list_backbones

        return list_backbones
    if name == "TrainConfig":
        from .config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'visiontune' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
