"""Read safetensors files with torch alone (no `safetensors` package), lazily by name.

Debian's python3-torch (the CI machine's) has no safetensors module and no float8 dtype;
a safetensors file is an 8-byte header length, a JSON header and raw little-endian bytes,
so reading it needs nothing more. F8_E4M3 tensors come back as uint8 bytes.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass

import torch

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    # float8 bytes stay bytes: the consumer decides whether to view them as float8.
    "F8_E4M3": torch.uint8,
    "F8_E5M2": torch.uint8,
    "F8_E8M0": torch.uint8,
}


class SafetensorsError(ValueError):
    """A file that is not a readable safetensors file; the message names the file."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its file, dtype name, shape and byte range in the data area."""

    path: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int
    data_start: int


def read_header(path: str) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse a file's header: the tensor entries and the `__metadata__` strings."""
    with open(path, "rb") as handle:
        raw_len = handle.read(8)
        if len(raw_len) != 8:
            raise SafetensorsError(f"{path}: shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > os.path.getsize(path) - 8:
            raise SafetensorsError(f"{path}: header length {header_len} exceeds the file")
        try:
            header = json.loads(handle.read(header_len))
        except json.JSONDecodeError as err:
            raise SafetensorsError(f"{path}: header is not JSON ({err})") from None
    metadata = header.pop("__metadata__", None) or {}
    entries = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        entries[name] = TensorEntry(path, info["dtype"], tuple(info["shape"]), begin, end, 8 + header_len)
    return entries, metadata


def read_tensor(entry: TensorEntry) -> torch.Tensor:
    """Read one tensor into memory (a private copy, so the file can close)."""
    if entry.dtype not in _DTYPES:
        raise SafetensorsError(f"{entry.path}: dtype {entry.dtype} is not supported")
    dtype = _DTYPES[entry.dtype]
    length = entry.end - entry.begin
    count = 1
    for dim in entry.shape:
        count *= dim
    itemsize = torch.empty((), dtype=dtype).element_size()
    if count * itemsize != length:
        raise SafetensorsError(f"{entry.path}: byte range of a {entry.dtype} {list(entry.shape)} tensor is {length} bytes")
    if count == 0:
        return torch.empty(entry.shape, dtype=dtype)
    with open(entry.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        start = entry.data_start + entry.begin
        data = bytearray(mapped[start : start + length])
    return torch.frombuffer(data, dtype=dtype, count=count).reshape(entry.shape)
