"""The restricted reader of legacy PyTorch weights files: real tensors come out exactly, and a
hostile, truncated or foreign file is refused with one line, before anything in it runs."""

import io
import pickle
import struct
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

from pipeline.models.torch_weights import LEGACY_MAGIC, LEGACY_PROTOCOL, WeightsFileError, read_state_dict


class _Global:
    """Pickled as a bare GLOBAL opcode naming ``module.name``, the way torch's pickles name things."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle only reduces to callables
        raise AssertionError("never called while writing")


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return _Global("torch._utils", "_rebuild_tensor_v2"), (
            self.storage,
            self.offset,
            self.size,
            self.stride,
            False,
            OrderedDict(),
        )


class _Call:
    """A value whose unpickling calls ``module.name(*args)``: what an attacker would write."""

    def __init__(self, module, name, *args):
        self.target, self.args = _Global(module, name), args

    def __reduce__(self):
        return self.target, self.args


class _Writer(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[_Global] = lambda self, obj: self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", obj.array.size)
        return None


def legacy_file(state, storages):
    """Bytes in torch.save's legacy (pre-zip) layout, written without torch."""
    out = io.BytesIO()
    for value in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}):
        pickle.dump(value, out, protocol=2)
    _Writer(out, protocol=2).dump(state)
    pickle.dump([storage.key for storage in storages], out, protocol=2)
    for storage in storages:
        out.write(struct.pack("<q", storage.array.size) + storage.array.astype("<f4").tobytes())
    return out.getvalue()


@pytest.fixture
def weights():
    data = np.arange(24, dtype=np.float32)
    storage = _Storage("1001", data)
    state = OrderedDict(
        conv=_Tensor(storage, 0, (2, 3, 2), (6, 2, 1)),
        transposed=_Tensor(storage, 12, (3, 4), (1, 3)),  # a strided view into the same storage
    )
    return legacy_file(state, [storage]), data


def test_tensors_come_out_exactly(tmp_path, weights):
    raw, data = weights
    path = tmp_path / "ok.pth"
    path.write_bytes(raw)
    tensors = read_state_dict(path)
    np.testing.assert_array_equal(tensors["conv"], data[:12].reshape(2, 3, 2))
    np.testing.assert_array_equal(tensors["transposed"], data[12:24].reshape(4, 3).T)


def test_a_file_that_names_os_system_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    storage = _Storage("1", np.zeros(2, dtype=np.float32))
    state = OrderedDict(w=_Tensor(storage, 0, (2,), (1,)), evil=_Call("os", "system", f"touch {marker}"))
    path = tmp_path / "evil.pth"
    path.write_bytes(legacy_file(state, [storage]))
    with pytest.raises(
        WeightsFileError, match=r"evil\.pth: refused to load 'os\.system': a weights file may only hold tensors"
    ):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", [("builtins", "eval"), ("torch", "load"), ("numpy", "frombuffer")])
def test_every_other_global_is_refused(tmp_path, global_name):
    path = tmp_path / "other.pth"
    path.write_bytes(legacy_file(OrderedDict(x=_Call(*global_name, "1")), []))
    with pytest.raises(WeightsFileError, match=f"refused to load '{global_name[0]}.{global_name[1]}'"):
        read_state_dict(path)


def test_a_truncated_file_is_refused(tmp_path, weights):
    raw, _ = weights
    for cut in (len(raw) - 5, len(raw) - 96, 40):
        path = tmp_path / "cut.pth"
        path.write_bytes(raw[:cut])
        with pytest.raises(WeightsFileError, match=r"cut\.pth: (truncated|not a valid PyTorch weights file)"):
            read_state_dict(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04 a zip archive, the new torch format", "not a valid PyTorch weights file"),
        (pickle.dumps(12345, protocol=2), "wrong magic number"),
        (b"", "not a valid PyTorch weights file"),
    ],
)
def test_foreign_files_are_refused(tmp_path, content, message):
    path = tmp_path / "foreign.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsFileError, match=message):
        read_state_dict(path)


def test_the_import_stage_prints_one_error_line_and_keeps_earlier_output(tmp_path, repo_root):
    storage = _Storage("1", np.zeros(2, dtype=np.float32))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(legacy_file(OrderedDict(evil=_Call("os", "system", "true")), [storage]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "imagenet_notop.weights.h5").write_bytes(b"earlier")
    result = subprocess.run(
        [
            sys.executable,
            str(repo_root / "stages" / "import_lite_weights.py"),
            "--backbone",
            "lite0",
            "--source",
            str(evil),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"error: {evil}: refused to load 'os.system': a weights file may only hold tensors"
    ]
    assert (out / "imagenet_notop.weights.h5").read_bytes() == b"earlier"


def _text(value):
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def legacy_raw(state_pickle, keys=()):
    """The legacy layout around a hand-written state pickle (opcodes an attacker would choose)."""
    out = io.BytesIO()
    for value in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}):
        pickle.dump(value, out, protocol=2)
    out.write(state_pickle)
    pickle.dump(list(keys), out, protocol=2)
    return out.getvalue()


#: BUILD on the shared ``torch.FloatStorage`` stand-in: sets its dtype to a string.
POISON = b"\x80\x02ctorch\nFloatStorage\n}" + _text("dtype") + _text("<f8") + b"sb."
#: BUILD on the tensor rebuild function: takes away its defaults.
POISON_REBUILD = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}" + _text("__defaults__") + b")s\x86b."


@pytest.mark.parametrize("poison", [POISON, POISON_REBUILD], ids=["storage_type", "rebuild_function"])
def test_a_crafted_file_cannot_poison_later_valid_loads(tmp_path, weights, poison):
    crafted = tmp_path / "crafted.pth"
    crafted.write_bytes(legacy_raw(poison))
    with pytest.raises(WeightsFileError) as raised:
        read_state_dict(crafted)
    assert "\n" not in str(raised.value) and str(raised.value).startswith(f"{crafted}: ")
    raw, data = weights
    valid = tmp_path / "valid.pth"
    valid.write_bytes(raw)
    np.testing.assert_array_equal(read_state_dict(valid)["conv"], data[:12].reshape(2, 3, 2))


@pytest.mark.parametrize(
    ("offset", "size", "stride"),
    [
        (0, (-1, 2), (2, 1)),  # a negative dimension
        (100, (), ()),  # a scalar past the end of its storage
        (0, (10**6, 10**6), (0, 0)),  # 10^12 elements out of 4 (stride 0): terabytes if copied
        (0, ("a",), (1,)),  # not a number
        (0, (2, 2), (1,)),  # fewer strides than dimensions
        (-1, (2,), (1,)),  # a negative offset
    ],
    ids=[
        "negative_dim",
        "scalar_past_end",
        "stride_zero_terabytes",
        "not_a_number",
        "strides_short",
        "negative_offset",
    ],
)
def test_bad_sizes_and_shapes_are_its_own_one_line_error(tmp_path, offset, size, stride):
    storage = _Storage("1", np.zeros(4, dtype=np.float32))
    path = tmp_path / "bad.pth"
    path.write_bytes(legacy_file(OrderedDict(w=_Tensor(storage, offset, size, stride)), [storage]))
    with pytest.raises(WeightsFileError) as raised:
        read_state_dict(path)
    assert "\n" not in str(raised.value) and str(raised.value).startswith(f"{path}: ")


def test_a_deeply_nested_storage_key_is_its_own_one_line_error(tmp_path):
    depth = 20_000
    deep = b"]" * depth + b"a" * (depth - 1)  # [[[...]]], built without recursion
    pid = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + deep + _text("cpu") + b"K\x02tQ"
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00K\x02\x85K\x01\x85tR"
    path = tmp_path / "deep.pth"
    path.write_bytes(legacy_raw(b"\x80\x02}" + _text("w") + tensor + b"s.", ["1"]))
    with pytest.raises(WeightsFileError) as raised:
        read_state_dict(path)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 400


def test_a_deeply_nested_dict_key_is_refused_instead_of_crashing_the_interpreter(tmp_path):
    """Hashing a tuple nested a million deep overflows the C stack (a segmentation fault, no
    exception): a state dict's keys are strings, so nothing else is hashed."""
    depth = 1_000_000
    key = b")" + b"\x85" * depth  # ((((),),),...), built without recursion
    path = tmp_path / "deep_key.pth"
    path.write_bytes(legacy_raw(b"\x80\x02}" + key + b"Ns."))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pipeline.errors import run_cli; from pipeline.models.torch_weights import read_state_dict; "
            "sys.exit(run_cli(lambda argv: read_state_dict(sys.argv[1])))",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stderr.startswith(f"error: {path}: "), (
        result.returncode,
        result.stderr[-300:],
    )
    assert len(result.stderr.splitlines()) == 1
