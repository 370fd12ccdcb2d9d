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
        if out is None:
            out = torch.empty(info.shape, dtype=info.dtype)
        if out.dtype != info.dtype or out.numel() * out.element_size() != info.nbytes or not out.is_contiguous():
            raise CheckpointError(f"tensor {name!r} cannot be read into a {out.dtype} tensor of {tuple(out.shape)}")
        if info.nbytes:
            view = memoryview(out.view(-1).view(torch.uint8).numpy())
            self._file.seek(info.offset)
            done = 0
            while done < info.nbytes:
                n = self._file.readinto(view[done:])
                if not n:
                    raise CheckpointError(f"{self.path.name} ends inside tensor {name!r}")
                done += n
        return out

    def close(self) -> None:
        self._file.close()
