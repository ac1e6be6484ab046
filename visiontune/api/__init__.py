"""Workflows composed from the layers: ``fit``, ``fit_ensemble``, ``load``, ``evaluate``, ``predict``,
``advise``, ``check``, ``extract``, ``similar``, ``augment_preview``. One private module per workflow.

>>> import visiontune
>>> result = visiontune.fit("photos/", strategy="head", epochs=20)    # doctest: +SKIP
>>> model = visiontune.load(result.run_dir)                            # doctest: +SKIP
>>> model.predict(["new.jpg"], top_k=2)                                # doctest: +SKIP
"""

import importlib

# Public name -> the private module that defines it. Imported on first use, so that a workflow
# which needs neither torch nor timm (``visiontune check``) does not pay for importing them.
_EXPORTS = {
    "advise": "_advice",
    "augment_preview": "_augment",
    "check": "_check",
    "extract": "_embeddings",
    "similar": "_embeddings",
    "EnsembleFitResult": "_ensemble",
    "fit_ensemble": "_ensemble",
    "ExportReport": "_export",
    "export": "_export",
    "evaluate": "_inference",
    "load": "_inference",
    "predict": "_inference",
    "resume": "_resume",
    "FitResult": "_training",
    "fit": "_training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
