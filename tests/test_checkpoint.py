"""A training checkpoint's header: a damaged or odd one is a one-line error, never a traceback."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from visiontune.errors import BundleError
from visiontune.formats.checkpoint import (
    CHECKPOINT_FILE,
    TrainingState,
    read_checkpoint_meta,
    save_checkpoint,
)

META_KEY = "visiontune_checkpoint"


def _with_header(path, header: str) -> None:
    save_file({"model/w": torch.zeros(2)}, str(path), metadata={META_KEY: header})


def test_a_checkpoint_round_trips_its_header(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, model=model, optimizer=optimizer, state=TrainingState(epoch=2))
    assert read_checkpoint_meta(path)["epoch"] == 2


@pytest.mark.parametrize(
    "header, match",
    [
        (json.dumps({"format_version": "1"}), "format_version '1' is invalid"),
        (json.dumps({"format_version": 99}), "newer visiontune"),
        (json.dumps({"epoch": 1}), "has no format_version"),
        (json.dumps([1]), "the header must be a JSON object"),
        ("{not json", "not valid JSON"),
    ],
    ids=["string version", "newer", "no version", "list", "not json"],
)
def test_odd_checkpoint_headers_are_one_line_errors(tmp_path, header, match):
    path = tmp_path / CHECKPOINT_FILE
    _with_header(path, header)
    with pytest.raises(BundleError, match=match) as info:
        read_checkpoint_meta(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
