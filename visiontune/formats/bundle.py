"""The model bundle: ``model.safetensors`` + ``config.json``, loadable without pickle.

``config.json`` holds everything needed to rebuild and feed the model: the format version,
backbone name, preprocessing, class names, head shape, strategy and library versions. Files are
written atomically (temporary file, then rename), so a kill leaves the old file or the new one.

Loading checks both files before anything uses them: every field the model is rebuilt from is
validated with bounds (``formats.validation``), and ``integrity`` (written at save: a digest of
the weights' tensors and one over classes, preprocess, head and that digest) must match, so a
reordered class list, an edited crop or weights copied from another run are refused with one
line naming the file instead of silently relabelling predictions. Bundles saved before the seal
existed (no ``integrity``) still load, unchecked.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .._io import atomic_write, atomic_write_text
from ..backbones import Classifier, Head, create_backbone
from ..errors import BundleError
from ..specs import LabelMap, PreprocessSpec, WeightsSpec
from .export_metadata import state_digest
from .trust import check_trust, write_trust_tensors
from .validation import (
    check_classes,
    check_format_version,
    check_object,
    check_preprocess,
    meaning_digest,
)

__all__ = [
    "AUTO_FILE",
    "FORMAT_VERSION",
    "load_bundle",
    "read_bundle_config",
    "save_bundle",
    "state_digest",
]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# ``--strategy auto``'s decision beside the bundle (``training.auto``); reports show it.
AUTO_FILE = "auto.json"


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
    folder: str | Path,
    model: Classifier,
    *,
    labels: LabelMap,
    extra: dict | None = None,
    trust: dict | None = None,
    trust_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the bundle into ``folder``; ``extra`` (strategy, training settings...) goes into
    the JSON; ``trust`` (temperature, rejection scale) too, with ``trust_tensors`` (the
    rejection statistics) in ``trust.safetensors`` (``formats.trust``)."""
    folder = Path(folder)
    if trust is not None:
        trust = dict(trust)
        if trust_tensors is not None and trust.get("rejection") is not None:
            digest = write_trust_tensors(folder, trust_tensors)
            trust["rejection"] = {**trust["rejection"], "sha256": digest}
    backbone = model.backbone
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
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
        **({"trust": trust} if trust is not None else {}),
    }
    config["integrity"] = _integrity(config, state_digest(state))
    atomic_write(
        folder / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"})
    )
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return folder


def _meaning(config: dict) -> dict:
    """What gives the saved outputs their meaning, as ``config`` states it (validated)."""
    head = config.get("head", {})
    meaning = {
        "classes": list(config["classes"]),
        "preprocess": PreprocessSpec.from_dict(config["preprocess"]).to_dict(),
        "head": {"type": head.get("type", "linear"), "dropout": float(head.get("dropout", 0.0))},
    }
    if "precision" in config:  # the dtype its outputs were validated and calibrated in
        meaning["precision"] = config["precision"].get("inference")
    if "trust" in config:  # the temperature and rejection scale change what outputs mean
        trust = config["trust"]
        meaning["trust"] = {"temperature": trust.get("temperature"), **trust.get("rejection", {})}
        if trust.get("multi_label"):  # sigmoid outputs, cut at these thresholds
            meaning["trust"]["thresholds"] = trust.get("thresholds")
    return meaning


def _integrity(config: dict, weights_sha256: str) -> dict:
    """``config.json``'s seal: the weights' digest, and one over it with classes, preprocessing
    and head, so neither file can change (or be swapped for another run's) unnoticed."""
    return {
        "weights_sha256": weights_sha256,
        "config_sha256": meaning_digest({**_meaning(config), "weights_sha256": weights_sha256}),
    }


def _describe_file(path: Path) -> str:
    """Why a file is not a run folder, saying what it looks like instead."""
    name = path.name.lower()
    if zipfile.is_zipfile(path):
        with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n.endswith("/extra/visiontune.json") for n in names):
                return (
                    f"{path} is a TorchScript export (`visiontune export --format torchscript`); "
                    "predict and evaluate take a run folder or an .onnx export"
                )
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                return f"{path} is a TorchScript file; give a run folder or an .onnx export"
    if name == WEIGHTS_FILE or name == CONFIG_FILE:
        return f"{path} is one file of a run folder; give the folder, {path.parent}"
    return f"{path} is a file, not a run folder (a folder holding {CONFIG_FILE} + {WEIGHTS_FILE})"


def read_bundle_config(folder: str | Path) -> dict:
    """``config.json`` of the run folder, every field the model is rebuilt from validated."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if folder.is_file():
        raise BundleError(_describe_file(folder))
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
    except OSError as exc:
        raise BundleError(f"cannot read {config_path}: {exc.strerror or exc}") from exc
    _validate_config(config, config_path)
    return config


def _validate_config(config, config_path: Path) -> None:
    where = str(config_path)
    check_object(config, where, "the whole file")
    version = check_format_version(config.get("format_version"), where)
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{config_path.parent} was saved in bundle format {version}; this visiontune reads "
            f"up to {FORMAT_VERSION}. Upgrade visiontune to load it."
        )
    name = check_object(config.get("backbone"), where, "backbone").get("name")
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}: backbone.name must be a backbone name, got {name!r}")
    check_classes(config.get("classes"), where)
    check_preprocess(config.get("preprocess"), where)
    _check_head(check_object(config.get("head", {}), where, "head"), where)
    for key in ("training", "data", "strategy", "integrity"):
        if key in config:
            check_object(config[key], where, key)
    if "trust" in config:
        check_trust(config["trust"], where)
    data = config.get("training", {}).get("data")  # where `export` finds parity-check images
    if data is not None and not isinstance(data, str):
        raise BundleError(f"{where}: training.data must be a folder path, got {data!r}")


def _check_head(head: dict, where: str) -> None:
    if head.get("type", "linear") != "linear":
        raise BundleError(
            f"{where}: head.type {head['type']!r} is not one this visiontune builds (linear)"
        )
    dropout = head.get("dropout", 0.0)
    if not isinstance(dropout, int | float) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise BundleError(f"{where}: head.dropout must be a number in [0, 1), got {dropout!r}")


def _read_weights(config: dict, folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, checked against ``config.json``'s seal."""
    path = folder / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError...: the file is unusable
        raise BundleError(f"cannot load {path}: {_first_line(exc)}") from exc
    sealed = config.get("integrity")
    if sealed is None:  # written before bundles were sealed: nothing to check against
        return state
    digest = state_digest(state)
    if digest != sealed.get("weights_sha256"):
        raise BundleError(
            f"{path} does not match the weights checksum in {CONFIG_FILE}: one of the two "
            "files was modified, damaged or copied from another run, or a save was killed "
            "between them"
        )
    if _integrity(config, digest)["config_sha256"] != sealed.get("config_sha256"):
        raise BundleError(
            f"{folder / CONFIG_FILE}: its classes, preprocess, head or trust entry differ from "
            "what was saved "
            f"with {WEIGHTS_FILE} (the file was edited or damaged); predictions would be "
            "mislabelled, so it is refused"
        )
    return state


def _mismatch(state: dict, labels: LabelMap, folder: Path) -> str | None:
    """The head's class count against the weights', in the user's terms, or None."""
    saved = state.get("head.fc.weight")
    if saved is not None and saved.ndim == 2 and saved.shape[0] != len(labels):
        return (
            f"{folder / CONFIG_FILE} lists {len(labels)} classes but {WEIGHTS_FILE} has a head "
            f"for {saved.shape[0]}"
        )
    return None


def _state_dict_error(exc: Exception) -> str:
    """torch's message without its header line ("Error(s) in loading state_dict for ..."):
    the first two of the reasons it lists."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line.rstrip(".") for line in lines[1:] or lines] or [type(exc).__name__]
    text = "; ".join(reasons[:2])
    return text if len(text) <= 400 else text[:397] + "..."


def load_bundle(folder: str | Path) -> tuple[Classifier, LabelMap, dict]:
    """Rebuild the model from a bundle folder: ``(model in eval mode, labels, config)``."""
    folder = Path(folder)
    config = read_bundle_config(folder)
    labels = LabelMap(tuple(config["classes"]))
    # Trained weights: the recorded hash names the file training started from, not these
    # tensors, so the spec says fine-tuned and the feature cache hashes the tensors instead.
    weights = WeightsSpec(
        preprocess=PreprocessSpec.from_dict(config["preprocess"]),
        source=str(config["backbone"].get("weights_source", "bundle")),
        sha256=config["backbone"].get("weights_sha256"),
        fine_tuned=True,
    )
    backbone = create_backbone(config["backbone"]["name"], weights="none").with_weights(weights)
    dropout = float(config.get("head", {}).get("dropout", 0.0))
    model = Classifier(backbone, Head(backbone.num_features, len(labels), dropout=dropout))
    state = _read_weights(config, folder)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        reason = _state_dict_error(exc)
        classes = _mismatch(state, labels, folder)
        raise BundleError(
            f"cannot load {folder / WEIGHTS_FILE}: "
            + (f"{classes} ({reason})" if classes else reason)
        ) from exc
    return model.eval(), labels, config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
