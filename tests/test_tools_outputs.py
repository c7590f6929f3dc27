"""Files the tools write: mode 0644 under umask 022 (M5), special files never replaced (M7), and
odd output paths refused with one line (m8). Never aimed at /dev/null or /dev/full: a fifo made
here stands for any non-regular file."""
import json
import os
import stat

import pytest

import model
from common.checkpoint import load_checkpoint, save_checkpoint
from helpers import call_tool, one_line_error
from model.checkpoint import checkpoint_dict, numpy_state_dict


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "train.pkl"
    net = model.get_model("RepVGG-A0", num_classes=10)
    save_checkpoint(checkpoint_dict(numpy_state_dict(net), "RepVGG-A0", "train",
                                    classes=tuple("abcdefghij"), dataset="imagenet",
                                    image_size=64), path)
    return path


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_convert_output_is_0644_and_keeps_metadata(train_ckpt, tmp_path, umask_022):
    out = tmp_path / "deploy.pkl"
    proc = call_tool("tools/convert.py", "--load", train_ckpt, "--save", out)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    saved = load_checkpoint(out)
    assert saved["form"] == "deploy" and saved["classes"] == tuple("abcdefghij")
    assert saved["dataset"] == "imagenet" and saved["image_size"] == 64
    assert sorted(os.listdir(tmp_path)) == ["deploy.pkl"]  # no temp file left


def test_search_json_outputs_are_0644(tmp_path, umask_022):
    from common.atomic import write_json
    path = write_json({"a": 1}, str(tmp_path / "arch.json"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert json.load(open(path)) == {"a": 1}


def test_convert_refuses_a_fifo_target_and_leaves_it(train_ckpt, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    msg = one_line_error(call_tool("tools/convert.py", "--load", train_ckpt, "--save", fifo))
    assert "not a regular file" in msg and str(fifo) in msg
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


@pytest.mark.parametrize("target, words", [
    ("folder", "is a folder"),              # an existing folder as the output file
    ("new/", "names a folder"),             # a path ending in '/'
    ("file/x.pkl", "cannot write"),         # a parent that is a file (unwritable place)
])
def test_convert_odd_outputs_are_one_line(train_ckpt, tmp_path, target, words):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    path = str(tmp_path / target) + ("/" if target.endswith("/") else "")
    proc = call_tool("tools/convert.py", "--load", train_ckpt, "--save", path)
    assert proc.returncode == 1 and words in one_line_error(proc)
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"]
    assert os.listdir(tmp_path / "folder") == []
