"""The embedded demo dataset: scikit-image's ``lfw_subset`` (faces vs. non-faces).

200 real 25x25 greyscale photos (100 face crops from Labeled Faces in the Wild, 100 crops of
other scenes) ship inside scikit-image, so the demo runs offline with no data of the user's.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ._paths import default_cache_dir
from .errors import DataError

__all__ = ["build_demo_dataset"]


def build_demo_dataset(
    folder: str | Path | None = None, *, test_fraction: float = 0.3, seed: int = 0
) -> Path:
    """Write lfw_subset as ``folder/{train,test}/{face,not_face}/*.png``; returns ``folder``."""
    from skimage.data import lfw_subset

    folder = Path(folder) if folder else default_cache_dir() / "demo" / "lfw_subset"
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return folder
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise DataError(
            f"--data-dir {folder}: not a demo dataset (train/ and test/) and not an empty folder"
        )
    images = lfw_subset()  # (200, 25, 25) floats in [0, 1]; the first 100 are faces
    labels = ["face"] * 100 + ["not_face"] * 100
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    test_ids = set()
    for name in ("face", "not_face"):
        members = [i for i in order if labels[i] == name]
        test_ids |= set(members[: int(len(members) * test_fraction)])
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted earlier build
    for i, img in enumerate(images):
        split = "test" if i in test_ids else "train"
        target = tmp / split / labels[i] / f"{i:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L").save(target)
    try:
        tmp.replace(folder)  # appears whole or not at all
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
