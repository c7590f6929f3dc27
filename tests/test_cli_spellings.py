"""One interface across the tools (issue 24 item 11): the checkpoint spelt the same everywhere
(positional where a tool has one main input, ``--checkpoint`` and ``--load`` as aliases), a folder
of images accepted by predict.py and infer.py (expanded by common/inputs.py, one message for a
path that is neither), and no argparse prefix abbreviations."""
import os

import pytest
from PIL import Image

from common.checkpoint import save_checkpoint
from helpers import call_tool, one_line_error


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import model
    from model.checkpoint import checkpoint_dict, numpy_state_dict

    net = model.get_model("RepVGG-A0", num_classes=10)
    path = str(tmp_path_factory.mktemp("spell") / "a0.pkl")
    save_checkpoint(checkpoint_dict(numpy_state_dict(net), "RepVGG-A0", "train",
                                    dataset="digits", image_size=32,
                                    classes=[str(i) for i in range(10)]), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with images in a sub-folder, a hidden file and a non-image file."""
    root = tmp_path_factory.mktemp("imgs")
    (root / "b").mkdir()
    for i, name in enumerate(["z.png", "a.jpg", "b/c.png"]):
        Image.new("RGB", (20, 24), (40 * i, 90, 200 - 40 * i)).save(str(root / name))
    (root / ".hidden.png").write_bytes((root / "z.png").read_bytes())
    (root / "notes.txt").write_text("not an image")
    return root, [str(root / n) for n in ("a.jpg", "b/c.png", "z.png")]


@pytest.mark.parametrize("spelling", ["positional", "--checkpoint", "--load"])
def test_convert_takes_every_spelling(ckpt, tmp_path, spelling):
    out = tmp_path / "d.pkl"
    where = [ckpt] if spelling == "positional" else [spelling, ckpt]
    proc = call_tool("tools/convert.py", *where, "--save", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


@pytest.mark.parametrize("tool, rest", [
    ("tools/eval.py", []), ("tools/convert.py", ["--save", "x.pkl"]),
    ("tools/export.py", ["--output", "x.onnx"]), ("tools/quantize.py", ["-o", "x.onnx"])])
def test_a_checkpoint_given_twice_or_not_at_all_is_a_usage_error(ckpt, tool, rest):
    proc = call_tool(tool, ckpt, "--load", ckpt, *rest)
    assert proc.returncode == 2 and "given twice" in one_line_error(proc)
    proc = call_tool(tool, *rest)
    assert proc.returncode == 2 and "a checkpoint is required" in one_line_error(proc)


def test_eval_and_export_take_load_and_positional(ckpt, tmp_path):
    for where in ([ckpt], ["--load", ckpt], ["--checkpoint", ckpt]):
        proc = call_tool("tools/eval.py", *where, "--limit", "10", "--device", "cpu")
        assert proc.returncode == 0, proc.stderr
        assert "digits val (10 images, 32x32)" in proc.stdout
    out = tmp_path / "a0.onnx"
    proc = call_tool("tools/export.py", ckpt, "--output", out)
    assert proc.returncode == 0, proc.stderr
    proc = call_tool("tools/export.py", ckpt, "--random-init", "--output", out)
    assert proc.returncode == 2 and "takes no checkpoint" in one_line_error(proc)


def test_predict_and_infer_expand_a_folder_sorted(ckpt, images, tmp_path):
    root, files = images
    proc = call_tool("tools/predict.py", "--load", ckpt, str(root), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert [l.split(":")[0] for l in proc.stdout.splitlines()] == files
    one = call_tool("tools/predict.py", "--checkpoint", ckpt, *files, "--device", "cpu")
    assert one.stdout == proc.stdout
    onnx = tmp_path / "a0.onnx"
    assert call_tool("tools/export.py", ckpt, "--output", onnx).returncode == 0
    proc = call_tool("tools/infer.py", onnx, str(root))
    assert proc.returncode == 0, proc.stderr
    assert [l for l in proc.stdout.splitlines() if not l.startswith(" ")] == files


def test_a_path_that_is_neither_gets_one_message_everywhere(ckpt, tmp_path):
    missing = str(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    onnx = tmp_path / "a0.onnx"
    assert call_tool("tools/export.py", ckpt, "--output", onnx).returncode == 0
    for tool, where in (("tools/predict.py", ["--checkpoint", ckpt]), ("tools/infer.py", [onnx])):
        proc = call_tool(tool, *where, missing)
        assert proc.returncode == 1
        assert one_line_error(proc) == "error: image not found: %s (no such file or folder)" \
            % missing
        proc = call_tool(tool, *where, str(empty))
        assert proc.returncode == 1 and "holds no image files" in one_line_error(proc)


@pytest.mark.parametrize("tool, args, abbreviation", [
    ("train.py", ["--epoch", "3"], "--epoch"),
    ("tools/eval.py", ["x.pkl", "--batch", "4"], "--batch"),
    ("tools/predict.py", ["--check", "x.pkl", "a.png"], "--check"),
    ("tools/quantize.py", ["x.pkl", "-o", "x.mge", "--calib-image", "4"], "--calib-image"),
    ("search.py", ["train", "--epoch", "3"], "--epoch"),
    ("tools/stats.py", ["--all", "--si", "32"], "--si")])
def test_prefix_abbreviations_are_refused(tool, args, abbreviation):
    # each was read as the longer flag it begins (--epochs, --batch-size, --checkpoint, ...)
    proc = call_tool(tool, *args)
    assert proc.returncode == 2
    assert "unrecognized arguments: " + abbreviation in one_line_error(proc)


class _Parsed(Exception):
    pass


def _parsers(parser):
    """``parser`` and its sub-commands' parsers."""
    import argparse
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


@pytest.mark.parametrize("tool", ["tools/eval.py", "tools/stats.py", "tools/convert.py",
                                  "tools/export.py", "tools/quantize.py", "tools/predict.py",
                                  "tools/infer.py", "search.py", "benchmarks/bench_binary.py"])
def test_every_flag_says_what_it_does(tool, monkeypatch):
    import argparse

    from common import cli
    from helpers import load_tool

    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise _Parsed

    monkeypatch.setattr(cli.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed):
        load_tool(tool).parse_args([])
    silent = ["%s %s" % (p.prog, a.option_strings[0]) for p in _parsers(seen[0])
              for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS
              and not (a.help or "").strip()]
    assert silent == []
