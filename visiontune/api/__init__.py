"""Workflows composed from the layers: ``fit``, ``load``, ``evaluate``, ``predict``, ``advise``,
``extract``, ``similar``, ``augment_preview``. One private module per workflow.

>>> import visiontune
>>> result = visiontune.fit("photos/", strategy="head", epochs=20)    # doctest: +SKIP
>>> model = visiontune.load(result.run_dir)                            # doctest: +SKIP
>>> model.predict(["new.jpg"], top_k=2)                                # doctest: +SKIP
"""

from ._advice import advise
from ._augment import augment_preview
from ._embeddings import extract, similar
from ._inference import evaluate, load, predict
from ._training import FitResult, fit

__all__ = ["FitResult", "advise", "augment_preview", "evaluate", "extract", "fit", "load", "predict",
           "similar"]
