"""The feature cache wired into training, and the embedding products: extract, similar, the
cache CLI."""

from __future__ import annotations

import json
import shutil
import weakref

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, make_class_folder, make_split_folder
from safetensors.torch import save_file

import visiontune
import visiontune.api
from visiontune.backbones.sources import load_timm_model
from visiontune.cli import main
from visiontune.features import extract as extract_mod
from visiontune.features.embedding_file import EmbeddingWriter


@pytest.fixture()
def split_data(tmp_path):
    return make_split_folder(
        tmp_path / "data", {"train": {"cat": 8, "dog": 8}, "test": {"cat": 3, "dog": 3}}
    )


def test_warm_cache_head_run_never_runs_the_backbone(split_data, tmp_path):
    cache = tmp_path / "cache"
    first = visiontune.fit(
        split_data,
        strategy="head",
        cache_dir=str(cache),
        out=str(tmp_path / "a"),
        progress=False,
        workers=0,
        **TINY,
    )
    second = visiontune.fit(
        split_data,
        strategy="head",
        cache_dir=str(cache),
        out=str(tmp_path / "b"),
        progress=False,
        workers=0,
        **TINY,
    )
    cold, warm = first.metrics["feature_extraction"], second.metrics["feature_extraction"]
    assert sum(v["computed"] for v in cold.values()) == 22
    assert sum(v["computed"] for v in warm.values()) == 0
    assert sum(v["from_cache"] for v in warm.values()) == 22
    assert first.metrics["test"]["accuracy"] == second.metrics["test"]["accuracy"]


def test_no_cache_writes_nothing(split_data, tmp_path):
    cache = tmp_path / "cache"
    visiontune.fit(
        split_data,
        strategy="head",
        cache=False,
        cache_dir=str(cache),
        out=str(tmp_path / "run"),
        progress=False,
        workers=0,
        **TINY,
    )
    assert not cache.exists()


def test_cache_views_add_augmented_training_rows(split_data, tmp_path):
    result = visiontune.fit(
        split_data,
        strategy="head",
        cache_views=2,
        cache_dir=str(tmp_path / "c"),
        out=str(tmp_path / "run"),
        progress=False,
        workers=0,
        **TINY,
    )
    views = result.metrics["feature_extraction"]["train_views"]
    train_images = result.metrics["feature_extraction"]["train"]["computed"]
    assert views["computed"] == 2 * train_images


def test_extract_writes_paths_labels_and_embeddings(split_data, tmp_path):
    out = tmp_path / "emb.npz"
    summary = visiontune.api.extract(
        split_data,
        out,
        backbone="test_efficientnet",
        weights="none",
        cache_dir=str(tmp_path / "c"),
        workers=0,
    )
    table = np.load(out)
    assert summary["rows"] == len(table["path"]) == 22
    assert table["embedding"].shape == (22, summary["dim"])
    assert set(table["split"]) == {"train", "test"}
    assert list(table["class_names"]) == ["cat", "dog"]
    for path, label, name in zip(table["path"], table["label"], table["class_name"], strict=True):
        assert f"/{name}/" in path and table["class_names"][label] == name


@pytest.mark.parametrize("precision", [None, "bf16", "fp32"])
def test_extract_warms_the_cache_train_reads_in_the_same_precision(split_data, tmp_path, precision):
    """``extract`` (and ``similar``, ``audit``) compute in ``train``'s precision, keyed so: a
    default ``extract`` fills what a default ``train`` reads (they once ran fp32 against
    train's bf16 and the warmed cache was never read), and so does any precision given to both."""
    torch.manual_seed(3)
    state = load_timm_model("test_efficientnet", weights="none").model.state_dict()
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    options = {"cache_dir": str(tmp_path / "c"), "workers": 0, "weights": str(weights)}
    options.update({} if precision is None else {"precision": precision})
    summary = visiontune.api.extract(
        split_data, tmp_path / "e.npz", backbone="test_efficientnet", **options
    )
    assert summary["computed"] == 22
    run = visiontune.fit(
        split_data,
        strategy="head",
        backbone="test_efficientnet",
        out=str(tmp_path / "run"),
        progress=False,
        **options,
    )
    extraction = run.metrics["feature_extraction"]
    assert sum(v["computed"] for v in extraction.values()) == 0
    assert sum(v["from_cache"] for v in extraction.values()) == 22


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_extract_writes_chunk_by_chunk_holding_one_at_a_time(
    split_data, tmp_path, monkeypatch, suffix
):
    """``extract`` hands each chunk to the file and lets it go (memory of one chunk, not of
    every image); the file holds what a one-chunk extraction writes."""
    torch.manual_seed(3)
    state = load_timm_model("test_efficientnet", weights="none").model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    options = {"backbone": "test_efficientnet", "weights": str(tmp_path / "w.safetensors")}
    options.update(workers=0, precision="fp32", cache_dir=str(tmp_path / "c"))
    whole = visiontune.extract(split_data, tmp_path / f"whole{suffix}", **options)
    monkeypatch.setattr(extract_mod, "STORE_EVERY", 5)
    held, add = [], EmbeddingWriter.add

    def checked_add(self, split, chunk):
        assert all(ref() is None for ref in held), "an earlier chunk is still alive"
        held.append(weakref.ref(chunk.features))
        add(self, split, chunk)

    monkeypatch.setattr(EmbeddingWriter, "add", checked_add)
    options["cache_dir"] = str(tmp_path / "cold")  # computed, in chunks of 5
    chunked = visiontune.extract(split_data, tmp_path / f"chunked{suffix}", **options)
    assert len(held) == 6  # train 16 = 5 + 5 + 5 + 1, test 6 = 5 + 1
    assert chunked["rows"] == whole["rows"] == 22 and chunked["computed"] == 22
    a, b = (_read_embeddings(tmp_path / f"{n}{suffix}") for n in ("whole", "chunked"))
    for column in ("path", "label", "split", "class_name"):
        assert list(a[column]) == list(b[column])
    assert b["embedding"].dtype == np.float32
    assert np.allclose(a["embedding"], b["embedding"], atol=1e-5)


def _read_embeddings(path) -> dict:
    if path.suffix == ".npz":
        return dict(np.load(path))
    frame = pd.read_parquet(path)
    columns = {c: frame[c].to_numpy() for c in frame.columns}
    columns["embedding"] = np.stack(columns["embedding"])
    return columns


def test_extract_rejects_unknown_suffix(split_data, tmp_path):
    assert main(["extract", str(split_data), "--out", str(tmp_path / "emb.txt")]) == 2
    assert not (tmp_path / "emb.txt").exists()


def test_similar_finds_the_copy_of_the_query_first(tmp_path, capsys):
    gallery = make_class_folder(tmp_path / "gallery", {"cat": 4, "dog": 4, "bird": 4})
    query = tmp_path / "query.png"
    shutil.copy(gallery / "dog" / "dog_2.png", query)
    rows = visiontune.api.similar(
        "test_efficientnet",
        query,
        gallery,
        k=3,
        weights="none",
        cache_dir=str(tmp_path / "c"),
        workers=0,
    )
    assert len(rows) == 3
    assert rows[0]["path"].endswith("dog/dog_2.png") and rows[0]["score"] == pytest.approx(
        1.0, abs=1e-5
    )
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    assert (
        main(
            [
                "similar",
                "test_efficientnet",
                str(query),
                str(gallery),
                "--k",
                "2",
                "--weights",
                "none",
                "--json",
                "--cache-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_a_data_folder_given_for_the_run_is_named_as_such(tmp_path, capsys):
    """The data folder where the run or backbone goes: not "unknown backbone '<folder>'"."""
    gallery = make_class_folder(tmp_path / "gallery", {"cat": 2, "dog": 2})
    query = next((gallery / "cat").iterdir())
    assert main(["similar", str(gallery), str(query), str(gallery)]) == 2
    err = capsys.readouterr().err
    assert f"{gallery} is a folder but not a run folder (it has no config.json)" in err


def test_similar_with_a_run_uses_its_fine_tuned_backbone(split_data, tmp_path):
    run = visiontune.fit(
        split_data,
        strategy="full",
        epochs=1,
        out=str(tmp_path / "run"),
        progress=False,
        workers=0,
        **TINY,
    ).run_dir
    query = next((split_data / "test" / "cat").iterdir())
    rows = visiontune.api.similar(
        run, query, split_data / "test", k=1, cache_dir=str(tmp_path / "c"), workers=0
    )
    assert rows[0]["path"] == str(query) and rows[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_cache_cli_info_and_clear(split_data, tmp_path, capsys):
    cache = tmp_path / "cache"
    visiontune.api.extract(
        split_data,
        tmp_path / "e.npz",
        backbone="test_efficientnet",
        weights="none",
        cache_dir=str(cache),
        workers=0,
    )
    assert main(["cache", "info", "--cache-dir", str(cache), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        len(info) == 1
        and info[0]["entries"] == 22
        and info[0]["description"]["backbone"] == "test_efficientnet"
    )
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert main(["cache", "info", "--cache-dir", str(cache), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1]) == []


def test_inference_outputs_can_be_trained_on(split_data):
    """Features come out of inference mode as ordinary tensors (a head can train on them)."""
    from visiontune.backbones import create_backbone
    from visiontune.data.folder import scan_folder
    from visiontune.engine.loop import Runtime
    from visiontune.features.extract import extract_features

    backbone = create_backbone("test_efficientnet", weights="none")
    fs = extract_features(backbone, scan_folder(split_data).train, runtime=Runtime(progress=False))
    head = torch.nn.Linear(fs.features.shape[1], 2)
    torch.nn.functional.cross_entropy(head(fs.features), fs.labels).backward()
    assert head.weight.grad is not None
