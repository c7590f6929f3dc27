"""common/progress.py: a tqdm bar on a terminal, occasional plain lines (no ``\\r``) off one."""
import io

from common.progress import PlainProgress, progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_off_a_terminal_no_carriage_returns_and_one_closing_line():
    out = io.StringIO()
    assert list(progress(range(500), desc="val", stream=out)) == list(range(500))
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [text.strip()]  # a fast loop: only the closing line
    assert text.startswith("val: 500/500, ") and ", done" in text


def test_off_a_terminal_lines_at_most_every_interval():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(None, 100, "epoch 1/2", "step", False, True, out, 10.0, clock=clock)
    for i in range(100):
        clock.now = i * 0.5  # 50 s in all: a line at 10, 20, 30, 40 s
        bar.set_postfix(loss="%.2f" % (1.0 / (i + 1)))
        bar.update(1)
    bar.close()  # leave=False: no closing line
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0] == "epoch 1/2: 21/100, 10 s (2.1 step/s), loss=0.05"


def test_disabled_prints_nothing():
    out = io.StringIO()
    bar = progress(total=3, desc="x", enabled=False, stream=out)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert out.getvalue() == ""
    out = Terminal()
    assert list(progress([1, 2], enabled=False, stream=out)) == [1, 2]
    assert out.getvalue() == ""


def test_on_a_terminal_a_tqdm_bar():
    from tqdm import tqdm
    out = Terminal()
    bar = progress(total=4, desc="epoch 1/1", stream=out)
    assert isinstance(bar, tqdm)
    with bar:
        bar.update(4)
    assert "\r" in out.getvalue() and "4/4" in out.getvalue()
