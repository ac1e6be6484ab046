"""Bytes on disk, imported by prediction, training and export alike.

``bundle.py`` (a run folder: ``model.safetensors`` + ``config.json``, what ``train`` writes and
``load`` reads), ``checkpoint.py`` (a training checkpoint), ``export_metadata.py`` (what an
exported file says about itself) and ``onnx_reader.py`` (reading an exported ``.onnx`` back).
Writers of exports live in ``visiontune.exporting``; this package sits below everything that
uses a model, next to ``backbones`` and ``data``.
"""
