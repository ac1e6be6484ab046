"""Test-time augmentation: deterministic views of each image, probabilities averaged over them.

Views come from the eval geometry of the weights' ``PreprocessSpec``: the short side resized to
``size / crop_pct`` (256 for a 224 model), then

- ``none``   the centre ``size`` crop (exactly the eval view): 1 view;
- ``flip``   that crop and its mirror image: 2 views;
- ``5crop``  the centre square of side ``size / crop_pct``, and from it the centre crop and the
             four corner crops of ``size`` (the centre one is the eval view): 5 views;
- ``10crop`` those five and the five of the mirrored square: 10 views.

Cropping the corners of the centre square, not of the whole image, is the classic 10-crop
(Krizhevsky et al., 2012): on a wide photo the corners of the full frame are often background.

>>> views = TTAViews(PreprocessSpec(size=224), "10crop")
>>> views(torch.zeros(3, 300, 400, dtype=torch.uint8)).shape
torch.Size([10, 3, 224, 224])
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..choices import TTA_MODES
from ..data.transforms import interpolation_mode
from ..errors import VisiontuneError
from ..specs import PreprocessSpec

__all__ = ["TTA_MODES", "TTAViews", "check_tta", "view_count"]

_VIEWS = {"none": 1, "flip": 2, "5crop": 5, "10crop": 10}


def check_tta(mode: str) -> str:
    if mode not in _VIEWS:
        raise VisiontuneError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return mode


def view_count(mode: str) -> int:
    """Views, hence forward passes, per image and model."""
    return _VIEWS[check_tta(mode)]


class TTAViews:
    """A decoded image (PIL or uint8 tensor) -> ``(views, 3, size, size)`` normalised tensor."""

    def __init__(self, spec: PreprocessSpec, mode: str = "none"):
        self.spec = spec
        self.mode = check_tta(mode)
        square = spec.size if mode in ("none", "flip") else spec.resize_size
        # Geometry on uint8 tensors (see data/transforms.py), normalisation once on the stack.
        self._geometry = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(spec.resize_size, interpolation=interpolation_mode(spec), antialias=True),
                v2.CenterCrop(square),
            ]
        )
        self._normalize = v2.Compose(
            [
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
            ]
        )

    def __repr__(self) -> str:
        return f"TTAViews({self.spec!r}, {self.mode!r})"

    def __call__(self, image) -> torch.Tensor:
        image = self._geometry(image)
        if self.mode == "none":
            views = [image]
        elif self.mode == "flip":
            views = [image, F.horizontal_flip(image)]
        elif self.mode == "5crop":
            views = list(F.five_crop(image, self.spec.size))
        else:  # five crops, then the same five of the mirrored image
            views = list(F.ten_crop(image, self.spec.size))
        return self._normalize(torch.stack([v.as_subclass(torch.Tensor) for v in views]))
