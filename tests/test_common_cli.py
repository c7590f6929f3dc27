"""common/cli.py: the shared parser, help formatter, argument checks and runner."""
import argparse
import warnings

import pytest

from common import cli


def _help(parser):
    return " ".join(parser.format_help().split())  # argparse wraps lines; compare words


def _parser():
    p = cli.ArgumentParser("Tool summary.\n\n    tool --x 1\n\nNotes.")
    p.add_argument("--load", required=True, help="input file")
    p.add_argument("--arch", help="architecture (default: the recorded one)")
    p.add_argument("--size", type=int, default=224, help="input size")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no bars")
    p.add_argument("--quiet", action="store_true", help="less output")
    p.add_argument("--top", type=cli.integer(min=1), default=5, help="classes shown")
    p.add_argument("--tol", type=cli.number(above=0), default=1e-5, help="tolerance")
    return p


def test_help_shows_real_defaults_only():
    text = _help(_parser())
    assert "input size (default: 224)" in text
    assert "classes shown (default: 5)" in text
    assert "(default: None)" not in text          # required / None options
    assert "(default: True)" not in text           # store_false flags read as "on by default"
    assert "(default: False)" not in text
    assert "input file --arch" in text or "input file" in text
    assert text.count("(default: the recorded one)") == 1  # not followed by a second default


def test_description_is_printed_once_and_examples_after_options():
    text = _parser().format_help()
    assert text.count("Tool summary.") == 1
    assert text.index("options:") < text.index("tool --x 1") < text.index("Notes.")
    assert "    tool --x 1" in text  # layout kept


@pytest.mark.parametrize("argv, words", [
    (["--load", "a", "--top", "0"], "argument --top: must be at least 1, got 0"),
    (["--load", "a", "--top", "x"], "argument --top: expected an integer, got 'x'"),
    (["--load", "a", "--tol", "0"], "argument --tol: must be above 0, got 0"),
    (["--load", "a", "--tol", "nan"], "argument --tol: expected a number"),
    (["--load", "a", "--tol", "inf"], "argument --tol: expected a number"),
    ([], "the following arguments are required: --load"),
])
def test_bad_arguments_are_one_error_line_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


def test_bounds_accept_their_edges():
    assert cli.integer(min=1, max=4)("4") == 4
    assert cli.number(min=0.0, max=1.0)("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError):
        cli.integer(min=1, max=4)("5")


def test_run_turns_user_errors_into_one_line(capsys):
    def main(argv):
        raise cli.UserError("bad thing")
    with pytest.raises(SystemExit) as e:
        cli.run(main, [])
    assert e.value.code == 1  # a refused input; argparse's usage errors keep 2
    assert capsys.readouterr().err == "error: bad thing\n"


def test_run_silences_the_subnormal_note(capsys):
    def main(argv):
        warnings.warn("The value of the smallest subnormal for <class 'numpy.float64'> type "
                      "is zero.", UserWarning)
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as e:
            cli.run(main, [])
    assert e.value.code == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("tool", ["tools/eval.py", "tools/predict.py", "tools/stats.py",
                                  "tools/convert.py", "verify.py"])
def test_tool_help_has_no_misleading_defaults_and_one_description(tool, capsys):
    from helpers import load_tool
    module = load_tool(tool)
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    text = capsys.readouterr().out
    summary = module.__doc__.strip().splitlines()[0]
    assert text.count(summary) == 1, text
    flat = " ".join(text.split())
    assert "(default: None)" not in flat and "(default: True)" not in flat
    assert "(default: False)" not in flat


def test_flags_come_from_the_settings_fields(capsys):
    """common/flags.py: one flag per field, None unless typed, defaults in the help, bounds
    checked while parsing, a shared setting with its own default."""
    import dataclasses
    from typing import Optional

    from common import flags

    @dataclasses.dataclass(frozen=True)
    class Base:
        batch_size: int = flags.setting(8, "images per step", type=cli.integer(min=1))
        data: Optional[str] = flags.setting(None, "data folder", metavar="DIR")
        mode: str = flags.setting("soft", "how to mix", choices=("soft", "hard"))
        progress: bool = flags.setting(True, "no bars", negate=True)
        port: int = flags.setting(1, "port", group="distributed", resume_check=True)

    @dataclasses.dataclass(frozen=True)
    class Other:
        batch_size: int = flags.like(Base, "batch_size", 64)

    p = flags.add_flags(cli.ArgumentParser("Tool."), Base, help={"mode": "mixing (default: soft)"})
    text = _help(p)
    assert "images per step (default: 8)" in text and "--data DIR data folder --mode" in text
    assert "mixing (default: soft) --no-progress no bars distributed: --port PORT" in text
    assert flags.given(Base, p.parse_args([])) == {}
    args = p.parse_args(["--batch-size", "2", "--no-progress", "--data", "x"])
    assert flags.given(Base, args) == {"batch_size": 2, "progress": False, "data": "x"}
    assert dataclasses.fields(Base)[-1].metadata["resume_check"]
    with pytest.raises(SystemExit):
        p.parse_args(["--batch-size", "0"])
    assert "argument --batch-size: must be at least 1, got 0" in capsys.readouterr().err
    q = flags.add_flags(cli.ArgumentParser("Tool."), Other)
    assert "images per step (default: 64)" in _help(q)
    with pytest.raises(SystemExit):
        q.parse_args(["--batch-size", "0"])


def test_run_ends_quietly_when_the_reader_closes_the_pipe():
    """``tool | head``: the reader exits early; the tool stops without a traceback."""
    import subprocess
    import sys
    code = ("from common.cli import run\n"
            "run(lambda argv: [print('row %d' % i) for i in range(200000)])\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={"PYTHONUNBUFFERED": "1", "PATH": ""},
                            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert proc.stdout.readline() == b"row 0\n"
    proc.stdout.close()  # the reader goes away after one line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
