"""Embedding files written a chunk at a time: ``.npz`` (NumPy's layout) and ``.parquet``.

Both hold the columns ``path``, ``label``, ``class_name``, ``split`` and ``embedding`` (one
float32 row per image); the ``.npz`` also holds ``class_names``. The writers take the rows
chunk by chunk so that ``extract`` never holds more than one chunk of embeddings: 100k images
of a 1,280-wide backbone are 0.5 GB of float32, which used to be held three times over.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import VisiontuneError
from .extract import FeatureSet

__all__ = ["SUFFIXES", "EmbeddingWriter", "embedding_writer"]

SUFFIXES = (".npz", ".parquet")


class EmbeddingWriter:
    """Rows of an embedding file, added a chunk at a time; ``close`` finishes the file. As a
    context manager it closes on success and ``discard`` s the unfinished file's handles on an
    error (the caller deletes the file).

    This base counts the rows and checks their width; a subclass writes each chunk as it
    comes."""

    def __init__(self, path: str | Path, class_names: Sequence[str]):
        self.path = Path(path)
        self.class_names = list(class_names)
        self.rows = 0
        self.dim: int | None = None

    def add(self, split: str, chunk: FeatureSet) -> None:
        embedding = np.ascontiguousarray(chunk.features.float().numpy(), dtype=np.float32)
        if self.dim not in (None, embedding.shape[1]):
            raise ValueError(f"embedding width {embedding.shape[1]}, earlier rows {self.dim}")
        self.dim = embedding.shape[1]
        self.rows += len(embedding)
        self._write(
            {
                "path": [str(s.path) for s in chunk.samples],
                "label": chunk.labels.numpy().astype(np.int64),
                "split": [split] * len(embedding),
            },
            embedding,
        )

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()

    def _write(self, columns: dict, embedding: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


class _NpzWriter(EmbeddingWriter):
    """``np.savez``'s archive (one stored ``.npy`` member per column, so ``np.load`` reads it).

    By hand because ``np.savez`` wants every column in memory: the embedding rows go to a
    scratch file as they come and are copied into the archive behind their ``.npy`` header,
    whose shape is known only at the end."""

    def __init__(self, path: str | Path, class_names: Sequence[str]):
        super().__init__(path, class_names)
        self.columns: dict[str, list] = {"path": [], "label": [], "split": []}
        self.scratch = tempfile.TemporaryFile(dir=self.path.parent)

    def _write(self, columns: dict, embedding: np.ndarray) -> None:
        for name, values in columns.items():
            self.columns[name].extend(values)
        self.scratch.write(embedding.tobytes())

    def close(self) -> None:
        label = np.array(self.columns["label"], dtype=np.int64)
        arrays = {
            "class_names": np.array(self.class_names),
            "path": np.array(self.columns["path"]),
            "label": label,
            "split": np.array(self.columns["split"]),
            "class_name": np.array([self.class_names[i] for i in label]),
        }
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
            "fortran_order": False,
            "shape": (self.rows, self.dim or 0),
        }
        with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
            with archive.open("embedding.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, header)
                self.scratch.seek(0)
                shutil.copyfileobj(self.scratch, member, 1 << 20)
        self.scratch.close()

    def discard(self) -> None:
        self.scratch.close()


class _ParquetWriter(EmbeddingWriter):
    """One parquet row group per chunk (pyarrow's ``ParquetWriter``)."""

    def __init__(self, path: str | Path, class_names: Sequence[str]):
        super().__init__(path, class_names)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise VisiontuneError(
                "writing .parquet needs pyarrow (pip install pyarrow); or use .npz"
            ) from exc
        self.pa, self.pq = pa, pq
        self.writer = None  # opened with the first chunk's schema

    def _write(self, columns: dict, embedding: np.ndarray) -> None:
        pa = self.pa
        rows, dim = embedding.shape
        offsets = np.arange(0, rows * dim + 1, dim, dtype=np.int32)
        table = pa.table(
            {
                "path": pa.array(columns["path"], pa.string()),
                "label": pa.array(columns["label"], pa.int64()),
                "split": pa.array(columns["split"], pa.string()),
                "class_name": pa.array([self.class_names[i] for i in columns["label"]]),
                "embedding": pa.ListArray.from_arrays(offsets, embedding.reshape(-1)),
            }
        )
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    discard = close  # the caller deletes the half-written file


def embedding_writer(
    path: str | Path, class_names: Sequence[str], *, suffix: str | None = None
) -> EmbeddingWriter:
    """The writer of a ``suffix`` file (default: ``path``'s; ``.npz`` or ``.parquet``)."""
    suffix = suffix or Path(path).suffix
    if suffix == ".npz":
        return _NpzWriter(path, class_names)
    if suffix == ".parquet":
        return _ParquetWriter(path, class_names)
    raise VisiontuneError(f"--out must end in .npz or .parquet, got {Path(path).name}")
