"""The model bundle: ``model.safetensors`` + ``config.json``, loadable without pickle.

``config.json`` holds everything needed to rebuild and feed the model: the format version,
backbone name, preprocessing, class names, head shape, strategy and library versions. Files are
written atomically (temporary file, then rename), so a kill leaves the old file or the new one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .._io import atomic_write, atomic_write_text
from ..backbones import Classifier, Head, create_backbone
from ..errors import BundleError
from ..specs import LabelMap, PreprocessSpec, WeightsSpec

__all__ = ["FORMAT_VERSION", "load_bundle", "read_bundle_config", "save_bundle"]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _versions() -> dict:
    import timm
    import torchvision

    from .._version import __version__

    return {
        "visiontune": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
    }


def save_bundle(
    folder: str | Path, model: Classifier, *, labels: LabelMap, extra: dict | None = None
) -> Path:
    """Write the bundle into ``folder``; ``extra`` (strategy, training settings...) goes into
    the JSON."""
    folder = Path(folder)
    backbone = model.backbone
    config = {
        "format_version": FORMAT_VERSION,
        "backbone": {
            "name": backbone.name,
            "num_features": backbone.num_features,
            "weights_source": backbone.source,
            "weights_sha256": backbone.weights_sha256,
        },
        "preprocess": backbone.preprocess.to_dict(),
        "classes": list(labels.names),
        "head": {"type": "linear", "dropout": model.head.dropout_p},
        "versions": _versions(),
        **(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(
        folder / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"})
    )
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return folder


def read_bundle_config(folder: str | Path) -> dict:
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise BundleError(f"no such run folder: {folder}")
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise BundleError(
            f"{folder} is not a visiontune model: it needs {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{config_path} is not valid JSON: {exc}") from exc
    version = config.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{config_path} has no format_version")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{folder} was saved in bundle format {version}; this visiontune reads up to "
            f"{FORMAT_VERSION}. Upgrade visiontune to load it."
        )
    return config


def load_bundle(folder: str | Path) -> tuple[Classifier, LabelMap, dict]:
    """Rebuild the model from a bundle folder: ``(model in eval mode, labels, config)``."""
    folder = Path(folder)
    config = read_bundle_config(folder)
    labels = LabelMap(tuple(config["classes"]))
    # Trained weights: the recorded hash names the file training started from, not these
    # tensors, so the spec says fine-tuned and the feature cache hashes the tensors instead.
    weights = WeightsSpec(
        preprocess=PreprocessSpec.from_dict(config["preprocess"]),
        source=config["backbone"].get("weights_source", "bundle"),
        sha256=config["backbone"].get("weights_sha256"),
        fine_tuned=True,
    )
    backbone = create_backbone(config["backbone"]["name"], weights="none").with_weights(weights)
    model = Classifier(
        backbone,
        Head(backbone.num_features, len(labels), dropout=config["head"].get("dropout", 0.0)),
    )
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        model.load_state_dict(state)
    except Exception as exc:
        raise BundleError(
            f"cannot load {folder / WEIGHTS_FILE}: {str(exc).splitlines()[0]}"
        ) from exc
    return model.eval(), labels, config
