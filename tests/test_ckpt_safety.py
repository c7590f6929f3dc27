"""Checkpoints are untrusted input: nothing from a file runs, and bad files get one line."""
import io
import json
import os
import pickle
import struct
import types
import zipfile

import numpy as np
import pytest

from ckpt_converter import ConverterError, convert, load_torch_checkpoint
from ckpt_converter.export import _PickleWriter, write_pth
from errors import UserError
from helpers import one_line_error, run_tool


def call_pickle(module, name, *args):
    """A protocol-2 pickle that asks the loader to call ``module.name(*args)``."""
    arg_ops = pickle.dumps(args, protocol=2)[2:-1]  # the tuple's opcodes, no PROTO/STOP
    return b"\x80\x02c" + ("%s\n%s\n" % (module, name)).encode() + arg_ops + b"R."


def as_zip(data_pkl, members=()):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        for name, data in members:
            z.writestr("archive/data/" + name, data)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def as_legacy(main_pickle):
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
    return head + main_pickle + pickle.dumps([], protocol=2)


def hostile(marker):
    cmd = "touch %s" % marker
    return {
        "os.system": call_pickle("os", "system", cmd),
        "posix.system": call_pickle("posix", "system", cmd),
        "builtins.eval": call_pickle("builtins", "eval", "__import__('os').system(%r)" % cmd),
        "builtins.exec": call_pickle("builtins", "exec", "import os; os.system(%r)" % cmd),
        "subprocess.Popen": call_pickle("subprocess", "Popen", ["touch", str(marker)]),
        "torch.hub.load": call_pickle("torch.hub", "load", "evil/repo", "model"),
        "torch._C._load_library": call_pickle("torch._C", "_load_library", "/tmp/evil.so"),
        "torch._utils._rebuild_qtensor": call_pickle("torch._utils", "_rebuild_qtensor", 1),
    }


WRAPPERS = {"bare": lambda p: p, "zip": as_zip, "legacy": as_legacy}


@pytest.mark.parametrize("wrap", sorted(WRAPPERS))
@pytest.mark.parametrize("global_name", sorted(hostile("m")))
def test_hostile_globals_are_refused_and_never_run(tmp_path, global_name, wrap):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    path.write_bytes(WRAPPERS[wrap](hostile(marker)[global_name]))
    with pytest.raises(ConverterError, match="refusing to load: the file asks for %s"
                       % global_name.replace(".", r"\.")) as e:
        load_torch_checkpoint(str(path))
    assert isinstance(e.value, UserError)
    assert not marker.exists()


@pytest.mark.parametrize("module", ["builtins", "__builtin__"])
def test_harmless_builtins_load_and_the_rest_of_builtins_stays_refused(tmp_path, module):
    values = {"set": ([1, 2],), "frozenset": ([3],), "slice": (1, 5, 2), "complex": (1.5, -2.0),
              "bytearray": ("ab", "latin1")}
    expected = {"set": {1, 2}, "frozenset": frozenset([3]), "slice": slice(1, 5, 2),
                "complex": complex(1.5, -2.0), "bytearray": bytearray(b"ab")}
    for name, args in values.items():
        path = tmp_path / ("%s.pth" % name)
        path.write_bytes(call_pickle(module, name, *args))
        assert load_torch_checkpoint(str(path)) == expected[name]
    marker = tmp_path / "marker"
    for name, args in [("getattr", (1, "real")), ("open", (str(marker), "w")),
                       ("__import__", ("os",)), ("bytearray", (2 ** 40,))]:
        path = tmp_path / ("%s.pth" % name)
        path.write_bytes(call_pickle(module, name, *args))
        with pytest.raises(ConverterError, match="refusing to load: the file asks for"):
            load_torch_checkpoint(str(path))
    assert not marker.exists()


def test_hostile_file_via_cli(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    path.write_bytes(as_zip(hostile(marker)["os.system"]))
    proc = run_tool("-m", "ckpt_converter", path, "--arch", "RepVGG-A0", "-o", tmp_path / "o.pkl")
    assert "refusing to load: the file asks for os.system" in one_line_error(proc)
    assert proc.returncode == 1 and not marker.exists() and not (tmp_path / "o.pkl").exists()


def test_unknown_classes_become_inert_placeholders(tmp_path):
    marker = tmp_path / "marker"
    # an unknown class "called" with arguments: recorded, never executed
    evil = call_pickle("evilpkg.runner", "Runner", "touch %s" % marker)
    path = tmp_path / "ph.pth"
    path.write_bytes(as_zip(evil))
    obj = load_torch_checkpoint(str(path))
    assert obj.qualname == "evilpkg.runner.Runner" and obj.args == ("touch %s" % marker,)
    assert not marker.exists()
    with pytest.raises(ConverterError, match="holds no state dict"):
        convert(str(path), "RepVGG-A0")


def tensor_zip(numel, shape, nbytes):
    """A zip checkpoint {"w": tensor} whose records claim ``numel`` elements of shape ``shape``
    while the storage member holds ``nbytes`` bytes."""
    fake = types.SimpleNamespace(dtype=np.dtype(np.float32), size=numel, shape=shape,
                                 ndim=len(shape))
    return as_zip(_PickleWriter().state_dict([("w", fake)]), [("0", b"\0" * nbytes)])


def safetensors(header, data=b"", header_len=None):
    text = json.dumps(header).encode()
    n = len(text) if header_len is None else header_len
    return struct.pack("<Q", n) + text + data


def truncated(path, fraction):
    data = open(path, "rb").read()
    return data[:int(len(data) * fraction)]


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    arrays = {"a": np.arange(64, dtype=np.float32), "b": np.ones((8, 8), np.float32)}
    zip_path = str(folder / "good.pth")
    write_pth(arrays, zip_path)
    header = {"a": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}
    st_path = folder / "good.safetensors"
    st_path.write_bytes(safetensors(header, arrays["a"].tobytes()))
    legacy = folder / "good_legacy.pth"  # a legacy file with one storage
    writer = _PickleWriter()
    main = writer.state_dict([("a", arrays["a"])])
    legacy.write_bytes(as_legacy(main)[:-len(pickle.dumps([], protocol=2))]
                       + pickle.dumps(["0"], protocol=2) + struct.pack("<q", 64)
                       + arrays["a"].tobytes())
    return {"zip": zip_path, "safetensors": str(st_path), "legacy": str(legacy)}


def test_good_files_read(good_files):
    for path in good_files.values():
        obj = load_torch_checkpoint(path)
        np.testing.assert_array_equal(obj["a"], np.arange(64, dtype=np.float32))


def test_recompressed_zip_reads_and_bomb_is_refused(good_files, tmp_path):
    src = zipfile.ZipFile(good_files["zip"])
    deflated = tmp_path / "deflated.pth"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info))
    obj = load_torch_checkpoint(str(deflated))
    np.testing.assert_array_equal(obj["b"], np.ones((8, 8), np.float32))
    # A member whose header claims 1 GiB inflated from a few bytes (a lying zip header).
    fake = types.SimpleNamespace(dtype=np.dtype(np.float32), size=2 ** 28, shape=(2 ** 28,),
                                 ndim=1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", _PickleWriter().state_dict([("w", fake)]))
        z.writestr("archive/data/0", b"\0" * 4096)
    data = bytearray(buf.getvalue())
    entry = data.rfind(b"archive/data/0") - 46  # its central-directory record
    assert data[entry:entry + 4] == b"PK\x01\x02"
    data[entry + 24:entry + 28] = struct.pack("<I", 2 ** 30)  # uncompressed size
    bomb = tmp_path / "bomb.pth"
    bomb.write_bytes(bytes(data))
    with pytest.raises(ConverterError, match="zip bomb"):
        load_torch_checkpoint(str(bomb))


F32x4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}

BAD = {  # name: (make the file from the good files, what the error says)
    "empty": (lambda g: b"", "is empty"),
    "random": (lambda g: np.random.default_rng(0).bytes(4096), "not a PyTorch checkpoint"),
    "text": (lambda g: b"hello world\n" * 10, "not a PyTorch checkpoint"),
    "zip_truncated_half": (lambda g: truncated(g["zip"], 0.5), "not a readable zip"),
    "zip_truncated_end": (lambda g: truncated(g["zip"], 0.99), "not a readable zip"),
    "zip_not_torch": (lambda g: _plain_zip(), "not a PyTorch checkpoint"),
    "zip_bad_pickle": (lambda g: as_zip(b"\x80\x02}q\x00(X"), "corrupt pickle"),
    "zip_missing_storage": (
        lambda g: as_zip(_PickleWriter().state_dict([("w", np.zeros(4, np.float32))])),
        "storage 0 is missing"),
    "zip_storage_too_small": (
        lambda g: tensor_zip(100, (100,), 40), "holds 40 bytes, its record says 400"),
    "zip_tensor_beyond_storage": (
        lambda g: tensor_zip(10, (20,), 40), "reaches element 19 but its storage holds only 10"),
    "legacy_truncated": (lambda g: truncated(g["legacy"], 0.9), "outside the file"),
    "legacy_truncated_pickle": (lambda g: truncated(g["legacy"], 0.3), "corrupt"),
    "safetensors_truncated": (
        lambda g: truncated(g["safetensors"], 0.7), "points outside the file"),
    "safetensors_header_too_long": (
        lambda g: safetensors({"a": {}}, header_len=10 ** 6), "exceeds the file"),
    "safetensors_offsets_outside": (
        lambda g: safetensors({"a": dict(F32x4, data_offsets=[0, 10 ** 9])}, b"\0" * 16),
        "points outside the file"),
    "safetensors_shape_mismatch": (
        lambda g: safetensors({"a": dict(F32x4, shape=[5])}, b"\0" * 16),
        "does not match its 16 bytes"),
    "safetensors_overlap": (
        lambda g: safetensors({"a": F32x4, "b": dict(F32x4, shape=[2], data_offsets=[8, 16])},
                              b"\0" * 16), "overlap"),
    "safetensors_bad_dtype": (
        lambda g: safetensors({"a": dict(F32x4, dtype="X9")}, b"\0" * 16),
        "malformed or unsupported"),
}


def _plain_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_raise_one_user_error(tmp_path, good_files, case):
    make, message = BAD[case]
    path = tmp_path / ("%s.pth" % case)
    path.write_bytes(make(good_files))
    with pytest.raises(ConverterError, match=message) as e:
        load_torch_checkpoint(str(path))
    assert "\n" not in str(e.value)
    with pytest.raises(ConverterError):
        convert(str(path), "RepVGG-A0")


@pytest.mark.parametrize("case", ["zip_truncated_half"])
def test_bad_files_via_cli(tmp_path, good_files, case):
    make, message = BAD[case]
    path = tmp_path / "bad.pth"
    path.write_bytes(make(good_files))
    out = tmp_path / "out.pkl"
    proc = run_tool("-m", "ckpt_converter", path, "--arch", "RepVGG-A0", "-o", out)
    assert proc.returncode == 1
    assert message in one_line_error(proc)
    assert sorted(os.listdir(tmp_path)) == ["bad.pth"]


def test_missing_input_and_folder(tmp_path):
    with pytest.raises(ConverterError, match="checkpoint not found"):
        load_torch_checkpoint(str(tmp_path / "nope.pth"))
    with pytest.raises(ConverterError, match="is a folder"):
        load_torch_checkpoint(str(tmp_path))


def test_missing_torch_venv_fails_not_skips(monkeypatch, tmp_path):
    import ckpt_fixtures
    monkeypatch.setattr(ckpt_fixtures, "TORCH_PY", str(tmp_path / "no-python"))
    with pytest.raises(pytest.fail.Exception, match="make setup-torch"):
        ckpt_fixtures.require_torch_venv()
