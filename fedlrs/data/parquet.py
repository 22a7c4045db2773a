"""A federation on disk: one Parquet file per split, one row per user, one row group per chunk of users.

Columns: ``user`` (int64), ``count`` (int32, real examples), and per user the raw bytes
(fixed-size binary, decoded by one copy instead of number by number) of ``X`` (``m_max * d``
numbers), ``y`` (``m_max``) and ``mask`` (``m_max`` bools): :class:`fedlrs.core.UserData`
flattened per user. The file's metadata (key ``fedlrs``) holds ``dim``, ``m_max`` and the
format version. A run reads one row group at a time (:meth:`ParquetFederation.read`),
so its memory is set by the chunk size, not by the number of users.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from fedlrs.core import UserData

FORMAT_VERSION = 1
NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64}


def _schema(dim: int, m_max: int, dtype: str) -> pa.Schema:
    width = np.dtype(NUMPY_DTYPES[dtype]).itemsize
    meta = {"fedlrs": json.dumps({"version": FORMAT_VERSION, "dim": dim, "m_max": m_max, "dtype": dtype})}
    return pa.schema(
        [("user", pa.int64()), ("count", pa.int32()), ("X", pa.binary(m_max * dim * width)), ("y", pa.binary(m_max * width)), ("mask", pa.binary(m_max))],
        metadata=meta,
    )


class FederationWriter:
    """Appends chunks of users (:class:`UserData`, all with the same ``m_max`` and ``d``) as row groups of one Parquet file."""

    def __init__(self, path: str | Path, *, dim: int, m_max: int, dtype: str = "float32"):
        if dtype not in NUMPY_DTYPES:
            raise ValueError(f"dtype == {dtype!r}, must be one of {sorted(NUMPY_DTYPES)}.")
        self.path, self.dim, self.m_max, self.dtype = Path(path), dim, m_max, dtype
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = _schema(dim, m_max, dtype)
        self._writer = pq.ParquetWriter(self.path, self.schema, compression="none", use_dictionary=False, write_statistics=["user", "count"])
        self.num_users = 0

    def write(self, data: UserData) -> None:
        """One row group: the users of ``data``, numbered after those already written."""
        n, m_max, dim = data.X.shape
        if (m_max, dim) != (self.m_max, self.dim):
            raise ValueError(f"a chunk has (m_max, d) == {(m_max, dim)}, must be {(self.m_max, self.dim)} like the file.")
        kind = NUMPY_DTYPES[self.dtype]
        X = data.X.detach().cpu().numpy().astype(kind, copy=False)
        y = data.y.detach().cpu().numpy().astype(kind, copy=False)
        mask = data.mask.cpu().numpy()
        columns = [
            pa.array(np.arange(self.num_users, self.num_users + n, dtype=np.int64)),
            pa.array(data.counts.cpu().numpy().astype(np.int32)),
            *(_blob(values, field.type, n) for values, field in zip((X, y, mask.astype(np.uint8)), (self.schema.field(i) for i in (2, 3, 4)))),
        ]
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema), row_group_size=max(n, 1))
        self.num_users += n

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "FederationWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_federation(data: UserData, path: str | Path, *, chunk_users: int, dtype: str = "float32") -> Path:
    """Write ``data`` to ``path`` in row groups of ``chunk_users`` users (a real-data loader's output, say)."""
    if chunk_users < 1:
        raise ValueError(f"chunk_users == {chunk_users}, must be >= 1.")
    with FederationWriter(path, dim=data.dim, m_max=data.X.shape[1], dtype=dtype) as writer:
        for start in range(0, data.num_users, chunk_users):
            writer.write(data.select(slice(start, start + chunk_users)))
    return Path(path)


def _blob(values: np.ndarray, kind: pa.DataType, n: int) -> pa.Array:
    """``n`` fixed-size binary values, row i = the bytes of ``values`` for user i (no per-number encoding)."""
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(np.ascontiguousarray(values).tobytes())])


def _unblob(table: pa.Table, name: str, kind, shape: tuple[int, ...]) -> np.ndarray:
    """A fixed-size binary column back to one writable numpy array of ``shape`` (one copy of its bytes)."""
    column = table.column(name).combine_chunks()
    width = column.type.byte_width
    data = column.buffers()[1]
    raw = np.frombuffer(data, dtype=np.uint8)[column.offset * width : (column.offset + len(column)) * width]
    return raw.view(kind).reshape(shape).copy()


class ParquetFederation:
    """The users of a Parquet file written by :class:`FederationWriter`, read a row group (chunk) at a time.

    A source for :class:`fedlrs.simulations.chunks.Federation` (``streamed``): ``num_users``,
    ``dim``, ``bounds`` (each chunk's users ``[start, stop)``), ``counts()`` and ``read(j)``.
    """

    streamed = True

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / "train.parquet"
        if not self.path.exists():
            raise ValueError(f"{self.path} does not exist: write it with `fedlrs data synth --out DIR` or write_federation.")
        self._file = pq.ParquetFile(self.path)
        raw = (self._file.schema_arrow.metadata or {}).get(b"fedlrs")
        if raw is None:
            raise ValueError(f"{self.path} is not a fedlrs federation (no 'fedlrs' metadata).")
        meta = json.loads(raw)
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.path} has format version {meta.get('version')}, this fedlrs reads {FORMAT_VERSION}.")
        self.dim, self.m_max, self.dtype = int(meta["dim"]), int(meta["m_max"]), meta["dtype"]
        sizes = [self._file.metadata.row_group(j).num_rows for j in range(self._file.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.bounds = [(int(starts[j]), int(starts[j + 1])) for j in range(len(sizes))]
        self.num_users = int(starts[-1])

    def counts(self) -> torch.Tensor:
        """``m_i`` of every user (int32), from the ``count`` column alone."""
        return torch.from_numpy(np.require(self._file.read(columns=["count"]).column("count").to_numpy(), requirements="W"))

    def read(self, j: int, dtype: torch.dtype = torch.float32, device="cpu") -> UserData:
        """Chunk ``j`` (row group ``j``) as :class:`UserData` of ``dtype`` on ``device``."""
        table = self._file.read_row_group(j, columns=["X", "y", "mask"])
        n = table.num_rows
        kind = NUMPY_DTYPES[self.dtype]
        X = torch.from_numpy(_unblob(table, "X", kind, (n, self.m_max, self.dim)))
        y = torch.from_numpy(_unblob(table, "y", kind, (n, self.m_max)))
        mask = torch.from_numpy(_unblob(table, "mask", np.bool_, (n, self.m_max)))
        return UserData(X, y, mask).to(device=device, dtype=dtype)

    def load(self, dtype: torch.dtype = torch.float64, device="cpu") -> UserData:
        """Every user at once (small federations: tests, the estimators' in-memory path)."""
        X = torch.empty(self.num_users, self.m_max, self.dim, dtype=dtype, device=device)
        y = torch.empty(self.num_users, self.m_max, dtype=dtype, device=device)
        mask = torch.empty(self.num_users, self.m_max, dtype=torch.bool, device=device)
        for j, (start, stop) in enumerate(self.bounds):  # filled a chunk at a time: no second copy of the whole
            chunk = self.read(j, dtype, device)
            X[start:stop], y[start:stop], mask[start:stop] = chunk.X, chunk.y, chunk.mask
        return UserData(X, y, mask)
