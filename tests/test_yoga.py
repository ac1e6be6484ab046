"""Integration on the real Yoga Poses copy in ../shared (skipped where it is absent, failed then
under $CI): its layout and its real-world defects (a truncated JPEG, wrong extensions,
RGBA/CMYK/palette images)."""

from __future__ import annotations

import pytest
from conftest import YOGA
from PIL import Image

from visiontune.data.folder import scan_folder
from visiontune.data.images import decode_image, header_problem

pytestmark = pytest.mark.usefixtures("yoga")  # skips where it is absent; fails under $CI


def test_layout_classes_and_counts():
    splits = scan_folder(YOGA, val_fraction=0.15, seed=0)
    assert splits.layout == "splits"
    assert splits.labels.names == ("downdog", "goddess", "plank", "tree", "warrior2")
    assert len(splits.train) + len(splits.val) == 1080 and len(splits.test) == 467


def test_every_image_decodes_to_rgb_including_the_defective_ones():
    splits = scan_folder(YOGA, val_fraction=0.0)
    notes = {}
    for sample in splits.train + splits.test:
        assert header_problem(sample.path) is None
        decoded = decode_image(sample.path, min_short_side=256)
        assert decoded.image.mode == "RGB" and min(decoded.image.size) > 0
        if decoded.note:
            notes[sample.path.relative_to(YOGA).as_posix()] = decoded.note
    assert (
        list(notes) == ["TRAIN/tree/00000114.jpg"]
        and "truncated" in notes["TRAIN/tree/00000114.jpg"]
    )


@pytest.mark.parametrize(
    "name, real_format",
    [
        ("TRAIN/tree/00000143.jpg", "PNG"),
        ("TRAIN/downdog/00000181.bmp", "JPEG"),
        ("TRAIN/goddess/00000103.png", "JPEG"),
    ],
)
def test_wrong_extensions_decode_by_content(name, real_format):
    with Image.open(YOGA / name) as img:
        assert img.format == real_format
    assert decode_image(YOGA / name).image.mode == "RGB"
