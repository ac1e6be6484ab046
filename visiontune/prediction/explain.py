"""Explanations: Grad-CAM maps of a class, drawn over the image as the model saw it.

Grad-CAM (Selvaraju et al., 2017) weights each channel of the backbone's last feature map by the
spatial mean of the class logit's gradient and keeps the positive part of the sum. It was chosen
over Grad-CAM++ (second- and third-order gradient terms) and Score-CAM (one forward pass per
channel: 1,280 for EfficientNet-Lite0) because it needs one forward and one backward pass, is the
best-tested variant, and for the usual visiontune model -- a linear head on average-pooled
features -- it is exactly CAM (Zhou et al., 2016), the map of what the head adds up at each place.
It is written here (about 40 lines) rather than taken from ``pytorch-grad-cam``, which pulls in
OpenCV and ttach; torchvision has none.

The feature map is timm's ``forward_features(x)``; the logits are ``head(forward_head(map))``,
which is the model's own forward (a test checks it), so the gradient comes from
``torch.autograd.grad`` without hooks. A ViT has tokens instead: the final patch tokens of a
class-token ViT do not reach the output at all, so the map is taken where they still do, at the
input of the last block (as ``pytorch-grad-cam`` does; no timm method returns it, so one forward
pre-hook records it): prefix tokens dropped, the patch tokens laid out on their grid
(``patch_embed.grid_size``, else a square). A backbone whose features have no spatial layout
raises ``VisiontuneError``.

>>> run = visiontune.fit(photos, strategy="head", out="run", progress=False, **TINY).run_dir
>>> written = explain_images(visiontune.load(run), [photos / "test" / "cat"], "overlays")
>>> sorted(p.name for p in written.values())[:2]
['cat_0.png', 'cat_1.png']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .._io import atomic_write
from .._paths import check_writable_dir
from ..backbones import Classifier
from ..data.folder import expand_image_paths
from ..data.images import ImageDecodeError, decode_image
from ..data.transforms import decode_size, eval_geometry, normalize
from ..errors import VisiontuneError
from .base import Predictor
from .ensemble import Ensemble
from .predictor import TrainedModel

__all__ = [
    "COLORMAP",
    "centre_crop",
    "check_explainable",
    "explain_decoded",
    "explain_images",
    "gradcam",
    "overlay",
    "overlay_names",
    "upsample",
]

COLORMAP = "jet"  # the usual Grad-CAM colours: blue = nothing, red = the strongest evidence
ALPHA = 0.5  # weight of the heat map over the photo


# --- the map ------------------------------------------------------------------------------------


def _spatial(t: torch.Tensor, body, name: str, prefix: int) -> torch.Tensor:
    """``t`` as ``(N, C, H, W)``: NCHW and NHWC maps, or ``(N, T, D)`` tokens minus ``prefix``."""
    channels = int(getattr(body, "num_features", 0) or 0)
    if t.ndim == 4:
        nhwc = t.shape[1] != channels and t.shape[-1] == channels  # Swin-style layouts
        return t.permute(0, 3, 1, 2) if nhwc else t
    if t.ndim == 3 and t.shape[1] > prefix:
        patches = t[:, prefix:, :]
        grid = getattr(getattr(body, "patch_embed", None), "grid_size", None)
        h, w = (int(g) for g in grid) if grid else (math.isqrt(patches.shape[1]),) * 2
        if h * w == patches.shape[1]:
            return patches.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
    raise VisiontuneError(
        f"{name}'s features have shape {tuple(t.shape[1:])}, not a spatial map or a grid of "
        "patch tokens, so Grad-CAM cannot place them on the image; explanations need a backbone "
        "with a last convolutional stage (EfficientNet, ResNet, ConvNeXt...) or a ViT"
    )


def _activations(model: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The tensor the map is read from, the logits, and its prefix-token count."""
    body = model.backbone.body
    prefix = getattr(body, "num_prefix_tokens", None)
    blocks = getattr(body, "blocks", None)
    if prefix is None or not isinstance(blocks, torch.nn.Sequential | torch.nn.ModuleList):
        features = body.forward_features(x)
        return features, model.head(body.forward_head(features)), 0
    # A ViT: the last block's input (its final patch tokens do not reach a class token).
    seen: list[torch.Tensor] = []
    handle = blocks[-1].register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        features = body.forward_features(x)
    finally:
        handle.remove()
    return (seen[-1] if seen else features), model.head(body.forward_head(features)), int(prefix)


def gradcam(
    model: Classifier, batch: torch.Tensor, classes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps ``(N, h, w)`` in [0, 1] (each image's peak is 1, an all-zero map stays 0)
    of ``classes`` (one index per image; default: each image's top class) on a normalised
    ``batch``, at the feature map's resolution, and the logits ``(N, classes)``."""
    name = model.backbone.name
    with torch.inference_mode(False), torch.enable_grad():
        x = batch.detach().clone().requires_grad_(True)  # a graph even when every weight is frozen
        acts, logits, prefix = _activations(model, x)
        chosen = logits.argmax(1) if classes is None else classes.to(logits.device)
        score = logits.gather(1, chosen.view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(score, acts)
    body = model.backbone.body
    fmap, grads = _spatial(acts.detach(), body, name, prefix), _spatial(grads, body, name, prefix)
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * fmap).sum(1))
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return cam / torch.where(peak > 0, peak, torch.ones_like(peak)), logits.detach()


def upsample(cam: torch.Tensor, size: int) -> np.ndarray:
    """One map ``(h, w)`` resized to ``(size, size)`` (bilinear), as a float array in [0, 1]."""
    big = F.interpolate(cam[None, None].float(), size=(size, size), mode="bilinear")
    return big[0, 0].clamp(0, 1).cpu().numpy()


def overlay(crop: np.ndarray, heat: np.ndarray, *, alpha: float = ALPHA) -> Image.Image:
    """``heat`` (``(S, S)`` in [0, 1]) coloured with ``COLORMAP`` and blended over ``crop``
    (uint8 ``(S, S, 3)``, the centre crop the model saw)."""
    from matplotlib import colormaps  # the colours only: no figure, no backend

    colours = colormaps[COLORMAP](heat)[..., :3] * 255.0
    blended = (1 - alpha) * crop.astype(np.float64) + alpha * colours
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")


# --- files --------------------------------------------------------------------------------------


def overlay_names(paths: Sequence[str | Path]) -> list[str]:
    """One PNG name per path: its stem + ``.png``; a later path whose name is taken gets
    ``-2``, ``-3``... (``cat.jpg``, ``cat.png``, ``x/cat.jpg`` -> ``cat.png``, ``cat-2.png``,
    ``cat-3.png``), compared without regard to case, as some file systems do.

    >>> overlay_names(["a/cat.jpg", "b/cat.jpg", "cat-2.png", "dog.jpeg"])
    ['cat.png', 'cat-2.png', 'cat-2-2.png', 'dog.png']
    """
    used: set[str] = set()
    names = []
    for path in paths:
        stem = Path(path).stem or "image"
        name, n = f"{stem}.png", 2
        while name.lower() in used:
            name, n = f"{stem}-{n}.png", n + 1
        used.add(name.lower())
        names.append(name)
    return names


def check_explainable(model: Predictor) -> list[TrainedModel]:
    """The models whose maps are averaged: a ``TrainedModel`` itself; an ``Ensemble``'s members
    that share its first member's preprocessing (all of them for ``train --ensemble N``; a member
    of another input size sees another crop, so it is left out of the map). Anything else (an
    ``.onnx`` export) raises ``VisiontuneError``: Grad-CAM needs the model's gradients."""
    if isinstance(model, TrainedModel):
        return [model]
    if isinstance(model, Ensemble):
        first = model.members[0].preprocess
        return [m for m in model.members if m.preprocess == first]
    raise VisiontuneError(
        f"explanations need a run folder (or an ensemble of them), not {type(model).__name__}: "
        "Grad-CAM takes gradients through the network, which an exported .onnx file does not "
        "give; run it on the run folder the file was exported from"
    )


def centre_crop(path: str | Path, spec) -> torch.Tensor | None:
    """The uint8 ``(3, size, size)`` crop the model sees of ``path`` (``eval_geometry``), or
    None when it cannot be decoded."""
    try:
        image = decode_image(path, min_short_side=decode_size(spec)).image
    except ImageDecodeError:
        return None
    return eval_geometry(spec)(image).as_subclass(torch.Tensor)


def _maps(members: list[TrainedModel], crops: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """The members' Grad-CAM maps of class ``wanted`` per image (-1: the top class of the
    members' mean probabilities, which costs a forward pass only where some image needs it),
    averaged."""
    spec = members[0].preprocess
    batch = crops
    for step in normalize(spec):  # uint8 crops -> the model's input, as eval_transform ends
        batch = step(batch)
    device = members[0].device
    chosen = wanted
    if (wanted < 0).any():
        with torch.no_grad():
            probs = torch.stack([torch.softmax(m.model(batch.to(device)), 1) for m in members])
        chosen = torch.where(wanted >= 0, wanted, probs.mean(0).cpu().argmax(1))
    maps = [gradcam(m.model, batch.to(m.device), chosen)[0].cpu() for m in members]
    return torch.stack(maps).mean(0)


def explain_images(
    model: Predictor,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    classes: Mapping[str, str] | None = None,
    batch_size: int = 16,
) -> dict[str, Path]:
    """Write one overlay PNG per image of ``paths`` (folders expanded) into ``out_dir``, named
    by ``overlay_names``: the Grad-CAM map of the class ``classes[str(path)]`` names (default:
    the model's top class on the centre crop) over the centre crop the model saw. Returns
    ``{str(path): overlay file}``; a file that cannot be decoded is left out. For an ensemble the
    members' maps are averaged (``check_explainable``); an ``.onnx`` model is refused."""
    members = check_explainable(model)
    out = check_writable_dir(out_dir, "explanations folder")
    files = expand_image_paths(paths)
    names = dict(zip(map(str, files), overlay_names(files), strict=True))
    spec, index = members[0].preprocess, {n: i for i, n in enumerate(model.labels.names)}
    unknown = sorted(set((classes or {}).values()) - set(index))
    if unknown:
        raise VisiontuneError(f"not classes of the model: {', '.join(unknown)}")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for start in range(0, len(files), batch_size):
        crops = {str(p): centre_crop(p, spec) for p in files[start : start + batch_size]}
        crops = {p: c for p, c in crops.items() if c is not None}
        if not crops:
            continue
        wanted = torch.tensor([index.get((classes or {}).get(p, ""), -1) for p in crops])
        for path, image in zip(
            crops, _overlays(members, list(crops.values()), wanted), strict=True
        ):
            target = out / names[path]
            atomic_write(target, lambda tmp, image=image: image.save(tmp, format="PNG"))
            written[path] = target
    return written


def explain_decoded(
    model: Predictor, images: Sequence, classes: Sequence[int] | None = None
) -> list[Image.Image]:
    """``explain_images`` of already decoded RGB images (PIL): one overlay per image, of the
    class index ``classes[i]`` (default: the top class), returned instead of written."""
    members = check_explainable(model)
    geometry = eval_geometry(members[0].preprocess)
    crops = [geometry(image).as_subclass(torch.Tensor) for image in images]
    wanted = torch.tensor(list(classes) if classes is not None else [-1] * len(crops))
    return _overlays(members, crops, wanted)


def _overlays(
    members: list[TrainedModel], crops: list[torch.Tensor], wanted: torch.Tensor
) -> list[Image.Image]:
    size = members[0].preprocess.size
    cams = _maps(members, torch.stack(crops), wanted)
    return [
        overlay(crop.permute(1, 2, 0).numpy(), upsample(cam, size))
        for crop, cam in zip(crops, cams, strict=True)
    ]
