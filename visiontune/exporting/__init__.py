"""Saved models: the bundle (``bundle.py``: safetensors + JSON, what ``train`` writes and ``load``
reads) and exports for other runtimes (``exporter.py``: ONNX in ``onnx.py``, TorchScript in
``torchscript.py``; what they embed in ``metadata.py``; the parity check in ``parity.py``).

Named ``exporting`` rather than ``export`` so that ``visiontune.export`` stays the function.
"""
