"""A safetensors file read one tensor at a time, into storage the caller chooses (the loader's reads)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


COLUMN_CHUNK_BYTES = 1 << 24  # the most whole rows a column slice reads at once


class CheckpointError(ValueError):
    """The checkpoint's tensors do not fit its config."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int


class SafetensorsFile:
    """One safetensors file read one tensor at a time with positioned reads, into a tensor the caller may give.

    No mmap: pages of the file read so far would count in the process's RSS for as long as the file is mapped,
    so a mapped shard would cost its whole size on top of the model it fills.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close(), one handle kept per shard
        try:
            (length,) = struct.unpack("<Q", self._file.read(8))
            header = json.loads(self._file.read(length))
        except (struct.error, ValueError) as exc:
            self._file.close()
            raise CheckpointError(f"{path.name} is not a safetensors file: {exc}") from exc
        self.tensors: dict[str, TensorInfo] = {}
        self.bytes_read = 0  # what the reads so far took from the file
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if meta["dtype"] not in _DTYPES:
                raise CheckpointError(f"tensor {name!r} in {path.name} has unsupported dtype {meta['dtype']}")
            start, end = meta["data_offsets"]
            self.tensors[name] = TensorInfo(_DTYPES[meta["dtype"]], tuple(meta["shape"]), 8 + length + start,
                                            end - start)

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor ``name``, read into ``out`` (a contiguous CPU tensor of its dtype and size) or a new one."""
        info = self.tensors[name]
        return self.read_rows(name, 0, info.shape[0] if info.shape else 1, out)

    def read_rows(self, name: str, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``[start, stop)`` of ``name`` (along its first dimension): one positioned read of their bytes,
        into ``out`` (contiguous, CPU, of their dtype and size) or a new tensor."""
        info = self.tensors[name]
        rows = info.shape[0] if info.shape else 1
        if not 0 <= start <= stop <= rows:
            raise CheckpointError(f"rows [{start}, {stop}) are outside tensor {name!r} of {rows} rows")
        row_bytes = info.nbytes // rows if rows else 0
        shape = (stop - start, *info.shape[1:]) if info.shape else ()
        if out is None:
            out = torch.empty(shape, dtype=info.dtype)
        nbytes = (stop - start) * row_bytes
        if out.dtype != info.dtype or out.numel() * out.element_size() != nbytes or not out.is_contiguous():
            raise CheckpointError(f"tensor {name!r} cannot be read into a {out.dtype} tensor of {tuple(out.shape)}")
        if nbytes:
            view = memoryview(out.view(-1).view(torch.uint8).numpy())
            self._file.seek(info.offset + start * row_bytes)
            done = 0
            while done < nbytes:
                n = self._file.readinto(view[done:])
                if not n:
                    raise CheckpointError(f"{self.path.name} ends inside tensor {name!r}")
                done += n
            self.bytes_read += nbytes
        return out

    def read_columns(self, name: str, start: int, stop: int, chunk_bytes: int = COLUMN_CHUNK_BYTES) -> torch.Tensor:
        """Columns ``[start, stop)`` of the matrix ``name``: whole rows are read (the columns are not contiguous on
        disk), at most ``chunk_bytes`` of them at a time, and their columns copied out."""
        info = self.tensors[name]
        rows = info.shape[0]
        out = torch.empty(rows, stop - start, dtype=info.dtype)
        step = max(1, chunk_bytes // max(1, info.nbytes // max(1, rows)))
        for first in range(0, rows, step):
            last = min(rows, first + step)
            out[first:last] = self.read_rows(name, first, last)[:, start:stop]
        return out

    def close(self) -> None:
        self._file.close()
