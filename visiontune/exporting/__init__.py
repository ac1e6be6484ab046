"""Exports for other runtimes (``exporter.py``: ONNX in ``onnx.py``, TorchScript in
``torchscript.py``; the parity check against ``prediction.TrainedModel`` in ``parity.py``).

It sits above ``prediction``: the parity check compares an export with the run's own predictor.
What the files embed (``export_metadata.py``), the run-folder bundle and the ONNX reader live in
``visiontune.formats``, which prediction imports without importing this package.

Named ``exporting`` rather than ``export`` so that ``visiontune.export`` stays the function.
"""
