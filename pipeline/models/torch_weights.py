"""Read a legacy (pre-zip) PyTorch ``state_dict`` file into numpy arrays, without torch.

A weights file is untrusted input: a pickle can name any Python callable, and a plain
``pickle.load`` (or ``torch.load`` without ``weights_only``) would call it. This reader uses
a restricted unpickler that resolves exactly the globals a state dict needs (the tensor
rebuild function, the storage types and ``OrderedDict``) and refuses everything else with a
:class:`WeightsFileError` that names the refused global, before anything is called.

The legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``) is a sequence
of pickles: magic number, protocol version, system info, the object (tensors refer to
storages by persistent id), the list of storage keys, then each storage's raw bytes behind
an 8-byte element count, in that order.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: Storage type -> element dtype (little-endian, as every supported file declares).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class WeightsFileError(PipelineError):
    """A weights file that is not a readable, safe PyTorch state dict."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. while unpickling: only its dtype is kept."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage whose bytes come later in the file (filled in by :func:`read_state_dict`)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _PendingTensor:
    """What ``torch._utils._rebuild_tensor_v2`` returned: a view to cut once storages are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        assert data is not None
        if not self.size:
            return data[self.offset].copy()
        itemsize = data.dtype.itemsize
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=data.dtype)
        if self.offset < 0 or needed > data.size or any(s < 0 for s in self.stride):
            raise WeightsFileError(f"tensor of shape {self.size} reaches outside its storage ({data.size} elements)")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride], writeable=False
        )
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise WeightsFileError("a tensor refers to something that is not a storage")
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a tensor state dict; storages come as persistent ids."""

    def __init__(self, stream, storages: dict[str, _Storage] | None = None):
        super().__init__(stream)
        self.storages = storages if storages is not None else {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise WeightsFileError(
                f"refused to load '{module}.{name}': a weights file may only hold tensors"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise WeightsFileError(f"unsupported persistent id {str(pid)[:60]!r}")
        _, storage_type, key, _location, numel = pid[:5]
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        return self.storages[key]


def _load_one(stream: io.BufferedIOBase, storages: dict[str, _Storage] | None = None) -> Any:
    return _RestrictedUnpickler(stream, storages).load()


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy PyTorch state dict file, by name, as numpy arrays.

    Raises :class:`WeightsFileError` (one line) for a missing, truncated, malformed or unsafe file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise WeightsFileError(f"{path}: cannot read weights file ({error.strerror})") from error
    stream = io.BytesIO(raw)
    try:
        if _load_one(stream) != LEGACY_MAGIC:
            raise WeightsFileError(f"{path}: not a legacy PyTorch weights file (wrong magic number)")
        if _load_one(stream) != LEGACY_PROTOCOL:
            raise WeightsFileError(f"{path}: unsupported PyTorch serialisation protocol")
        system = _load_one(stream)
        if not isinstance(system, dict) or not system.get("little_endian", False):
            raise WeightsFileError(f"{path}: only little-endian weights files are supported")
        storages: dict[str, _Storage] = {}
        state = _load_one(stream, storages)
        keys = _load_one(stream)
        if not isinstance(state, dict) or not isinstance(keys, list):
            raise WeightsFileError(f"{path}: does not hold a state dict")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise WeightsFileError(f"{path}: storage {key} is listed but never used")
            header = stream.read(8)
            if len(header) != 8:
                raise WeightsFileError(f"{path}: truncated (storage {key} missing)")
            (numel,) = struct.unpack("<q", header)
            if numel != storage.numel:
                raise WeightsFileError(f"{path}: storage {key} holds {numel} elements, expected {storage.numel}")
            nbytes = numel * storage.dtype.itemsize
            chunk = stream.read(nbytes)
            if len(chunk) != nbytes:
                raise WeightsFileError(f"{path}: truncated (storage {key} has {len(chunk)} of {nbytes} bytes)")
            storage.data = np.frombuffer(chunk, dtype=storage.dtype)
    except WeightsFileError as error:
        message = str(error)
        raise WeightsFileError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError, struct.error) as error:
        raise WeightsFileError(f"{path}: not a valid PyTorch weights file ({type(error).__name__}: {error})") from None
    missing = [key for key, storage in storages.items() if storage.data is None]
    if missing:
        raise WeightsFileError(f"{path}: truncated ({len(missing)} storages without data)")
    tensors = {}
    for name, value in state.items():
        if not isinstance(value, _PendingTensor):
            raise WeightsFileError(f"{path}: entry {name!r} is not a tensor")
        tensors[str(name)] = value.to_numpy()
    return tensors
