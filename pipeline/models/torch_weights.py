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


#: At most this many dimensions per tensor (PyTorch's own limit is 25; state dicts use 1 to 5).
MAX_DIMENSIONS = 25
#: What a malformed file can make the reading raise; each becomes one :class:`WeightsFileError`.
_MALFORMED = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
              struct.error, OverflowError, RecursionError, MemoryError, UnicodeDecodeError)


class _Sealed:
    """What the unpickler hands out may not be changed by the file: pickle's BUILD opcode calls
    ``__setstate__``, which refuses. (Each load also gets objects of its own, see
    :class:`_RestrictedUnpickler`, so nothing a file does outlives its load.)"""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise WeightsFileError(f"a weights file may not set the state of {type(self).__name__.strip('_')} (pickle BUILD)")


class _StorageType(_Sealed):
    """Stands in for ``torch.FloatStorage`` & co. while unpickling: only its dtype is kept."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage(_Sealed):
    """A storage whose bytes come later in the file (filled in by :func:`read_state_dict`)."""

    __slots__ = ("dtype", "numel", "data")

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _PendingTensor(_Sealed):
    """What ``torch._utils._rebuild_tensor_v2`` returned: a view to cut once storages are read."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        assert data is not None
        count = int(np.prod(self.size, dtype=object)) if self.size else 1
        if count == 0:
            return np.zeros(self.size, dtype=data.dtype)
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        if needed > data.size or count > data.size:  # a view never holds more elements than its storage
            raise WeightsFileError(f"tensor of shape {self.size} reaches outside its storage ({data.size} elements)")
        if not self.size:
            return data[self.offset].copy()
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * data.dtype.itemsize for s in self.stride], writeable=False
        )
        return np.array(view)


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Rebuild(_Sealed):
    """``torch._utils._rebuild_tensor_v2``: checks what a file passes, calls nothing of it."""

    __slots__ = ()

    def __call__(self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
        if not isinstance(storage, _Storage):
            raise WeightsFileError("a tensor refers to something that is not a storage")
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= MAX_DIMENSIONS
                and all(_natural(n) for n in (storage_offset, *size, *stride))):
            raise WeightsFileError(f"a tensor has a malformed shape (offset, sizes and strides must be counts, "
                                   f"as many strides as sizes, at most {MAX_DIMENSIONS})")
        return _PendingTensor(storage, storage_offset, size, stride)


#: What a dict key in a state dict may be. A tuple nested a million deep, hashed as a key, overflows
#: the C stack (a segmentation fault, not an exception): keys are checked before they are hashed.
_KEY_TYPES = (str, int, float, bytes, type(None))


def _scalar_keys(unpickler: pickle._Unpickler, keys: list) -> None:
    if not all(isinstance(key, _KEY_TYPES) for key in keys):
        raise WeightsFileError("a dict key that is not a string or a number (a state dict's keys are names)")


def _refuse_sets(unpickler: pickle._Unpickler) -> None:
    raise WeightsFileError("a set (a state dict holds none)")


def _guarded(opcode: bytes, keys_of) -> Any:
    original = pickle._Unpickler.dispatch[opcode[0]]

    def load(unpickler: pickle._Unpickler) -> None:
        _scalar_keys(unpickler, keys_of(unpickler.stack))
        original(unpickler)

    return load


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only the globals of a tensor state dict, as objects of this load alone;
    storages come as persistent ids. Python's own unpickler (not the C one), so that every
    opcode that hashes what the file built checks it first (a state dict's pickle is small: its
    tensors' bytes are read apart)."""

    dispatch = {
        **pickle._Unpickler.dispatch,
        pickle.SETITEM[0]: _guarded(pickle.SETITEM, lambda stack: stack[-2:-1]),
        pickle.SETITEMS[0]: _guarded(pickle.SETITEMS, lambda stack: stack[0::2]),  # the items after the mark
        pickle.DICT[0]: _guarded(pickle.DICT, lambda stack: stack[0::2]),
        **{opcode[0]: _refuse_sets for opcode in (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET)},
    }

    def __init__(self, stream, storages: dict[str, _Storage] | None = None):
        super().__init__(stream)
        self.storages = storages if storages is not None else {}
        self.allowed: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): OrderedDict,  # a built-in type: a file cannot change it
            ("torch._utils", "_rebuild_tensor_v2"): _Rebuild(),
            **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except (KeyError, TypeError):
            raise WeightsFileError(
                f"refused to load '{str(module)[:80]}.{str(name)[:80]}': a weights file may only hold tensors"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError("unsupported persistent id (expected a storage)")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(key, (str, int)) or isinstance(key, bool) or not _natural(numel):
            raise WeightsFileError("a storage's key must be a string and its size a count")
        key = str(key)[:100]
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
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
            storage = storages.get(str(key)[:100]) if isinstance(key, (str, int)) else None
            if storage is None:
                raise WeightsFileError(f"{path}: storage {str(key)[:100]!r} is listed but never used")
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
        missing = [key for key, storage in storages.items() if storage.data is None]
        if missing:
            raise WeightsFileError(f"truncated ({len(missing)} storages without data)")
        tensors = {}
        for name, value in state.items():
            if not isinstance(value, _PendingTensor):
                raise WeightsFileError(f"entry {str(name)[:100]!r} is not a tensor")
            tensors[str(name)[:1000]] = value.to_numpy()
    except WeightsFileError as error:
        message = str(error)
        raise WeightsFileError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    except _MALFORMED as error:
        detail = " ".join(str(error).split())[:160]
        raise WeightsFileError(f"{path}: not a valid PyTorch weights file ({type(error).__name__}: {detail})") from None
    return tensors
