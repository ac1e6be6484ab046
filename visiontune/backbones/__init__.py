"""Pretrained feature extractors: a registry, weight sources, and the Classifier anatomy."""

from .classifier import Backbone, Classifier, Head
from .registry import (
    BackboneInfo,
    create_backbone,
    embedded_backbones,
    get_backbone_info,
    list_backbones,
    register_backbone,
)

__all__ = [
    "Backbone",
    "BackboneInfo",
    "Classifier",
    "Head",
    "create_backbone",
    "embedded_backbones",
    "get_backbone_info",
    "list_backbones",
    "register_backbone",
]
