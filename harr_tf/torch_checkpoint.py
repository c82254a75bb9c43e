"""Reads a PyTorch `.pth` state dict into NumPy arrays without torch, and without
running code from the file.

A `.pth` is a pickle, and unpickling calls whatever globals the file names: a crafted
file naming `os.system` runs a command on load. `_Unpickler.find_class` therefore
resolves only the few globals a saved state dict needs (the ordered dict, the
tensor-rebuild functions, the storage types) and refuses everything else before it
is called. Tensors come back as arrays copied out of the file's storages, bounds-checked.

Both formats are read: the legacy one (torch < 1.6, or `_use_new_zipfile_serialization=
False`: pickles for the magic number, protocol, system info, the object and the storage
keys, then each storage as an 8-byte little-endian element count and its bytes) and the
zip one (`archive/data.pkl` plus one `archive/data/<key>` entry per storage).
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """The file is not a readable PyTorch state dict (or names a forbidden global)."""


class _Placeholder:
    """Refuses the pickle BUILD opcode, which would otherwise set its attributes."""

    def __setstate__(self, state) -> None:
        raise CheckpointError("the pickle sets the state of a tensor or storage")


class _Storage(_Placeholder):
    """A storage the object pickle refers to; its bytes are attached once read."""

    def __init__(self, dtype: type, numel: int) -> None:
        self.dtype = np.dtype(dtype)
        self.numel = numel
        self.data: np.ndarray | None = None


class _Tensor(_Placeholder):
    """A tensor view of a storage, materialised once every storage is read."""

    def __init__(self, storage, offset, size, stride) -> None:
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"a tensor's storage is not a storage (got {type(storage)})")
        shapes = isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
        if not shapes or not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)):
            raise CheckpointError("a tensor has an invalid offset, shape or stride")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def to_numpy(self, path) -> np.ndarray:
        size, stride, offset = self.size, self.stride, self.offset
        data = self.storage.data
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if 0 in size:
            return np.zeros(size, self.storage.dtype)
        if data is None or last >= data.size or math.prod(size) > data.size:
            raise CheckpointError(f"{path}: a tensor reaches past the end of its storage")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=[s * item for s in stride], writeable=False
        )
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_ignored):
    return data


# The whole allow-list: (module, name) -> what it resolves to.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): name for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED`; storages are named through persistent ids."""

    def __init__(self, file, path, storages: dict | None = None) -> None:
        super().__init__(file)
        self.path = path
        self.storages = storages  # None: this pickle may not refer to any storage

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise CheckpointError(
                f"{self.path} names the global {module}.{name}, which a PyTorch state dict "
                "never needs; refusing to load it (only tensors and ordered dicts are read)"
            )
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid):
        shape_ok = isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
        if self.storages is None or not shape_ok or pid[1] not in STORAGE_DTYPES:
            raise CheckpointError(f"{self.path}: unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self.path}: storage {key!r} has an invalid size")
        if key not in self.storages:
            self.storages[key] = _Storage(STORAGE_DTYPES[storage_type], numel)
        return self.storages[key]


def _load_pickle(file, path, storages=None):
    try:
        return _Unpickler(file, path, storages).load()
    except CheckpointError as error:
        if str(path) in str(error):
            raise
        raise CheckpointError(f"{path}: {error}") from None
    except Exception as error:  # a damaged pickle raises any of several types
        if isinstance(error, EOFError) or "truncated" in str(error):
            raise CheckpointError(f"{path} is truncated (it ends inside a pickle)") from error
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({error})") from error


def _read_legacy(file, path) -> object:
    if _load_pickle(file, path) != LEGACY_MAGIC:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (wrong magic number)")
    if _load_pickle(file, path) != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: unsupported PyTorch legacy protocol version")
    system = _load_pickle(file, path)
    if isinstance(system, dict) and not system.get("little_endian", True):
        raise CheckpointError(f"{path} was saved on a big-endian machine; not supported")
    storages: dict[str, _Storage] = {}
    result = _load_pickle(file, path, storages)
    keys = _load_pickle(file, path)
    remaining = os.fstat(file.fileno()).st_size - file.tell()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise CheckpointError(f"{path}: storage keys do not match the object's storages")
    for key in keys:
        storage = storages[key]
        header = file.read(8)
        numel = int.from_bytes(header, "little") if len(header) == 8 else -1
        nbytes = storage.numel * storage.dtype.itemsize
        remaining -= 8 + nbytes
        body = file.read(nbytes) if numel == storage.numel and remaining >= 0 else b""
        if len(body) != nbytes:
            raise CheckpointError(f"{path} is truncated (storage {key} is incomplete)")
        storage.data = np.frombuffer(body, storage.dtype)
    return result


def _read_zip(path) -> object:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        result = _load_pickle(io.BytesIO(archive.read(pickles[0])), path, storages)
        for key, storage in storages.items():
            body = archive.read(f"{prefix}data/{key}")
            if len(body) < storage.numel * storage.dtype.itemsize:
                raise CheckpointError(f"{path} is truncated (storage {key} is incomplete)")
            storage.data = np.frombuffer(body, storage.dtype, count=storage.numel)
    return result


def _materialise(value, path):
    if isinstance(value, _Tensor):
        return value.to_numpy(path)
    if isinstance(value, dict):
        return type(value)((k, _materialise(v, path)) for k, v in value.items())
    return value


def load_state_dict(path: str | Path) -> collections.OrderedDict[str, np.ndarray]:
    """The state dict saved at `path`, name -> np.ndarray, in the file's order.

    A checkpoint that wraps its state dict (`{"state_dict": ...}`) is unwrapped.
    Raises CheckpointError (a ValueError) naming `path` for a file that is not a
    PyTorch checkpoint, is truncated, or names a global outside the allow-list.
    """
    path = Path(path)
    try:
        is_zip = zipfile.is_zipfile(path)
        if is_zip:
            result = _read_zip(path)
        else:
            with open(path, "rb") as file:
                result = _read_legacy(file, path)
    except (zipfile.BadZipFile, KeyError) as error:
        raise CheckpointError(f"{path} is a damaged PyTorch zip checkpoint ({error})") from error
    if isinstance(result, dict) and isinstance(result.get("state_dict"), dict):
        result = result["state_dict"]
    if not isinstance(result, dict) or not all(isinstance(k, str) for k in result):
        raise CheckpointError(f"{path} does not hold a state dict (name -> tensor)")
    state = _materialise(result, path)
    tensors = collections.OrderedDict((k, v) for k, v in state.items() if isinstance(v, np.ndarray))
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return tensors
