"""Running the project's command-line tools as a user does."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(*args, timeout=600, **kwargs):
    """Run ``python <args>`` from the project root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def one_line_error(proc):
    """The error a tool printed: exactly one line on stderr, starting with 'error: '."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def model_from_file(path, arch=None):
    """Load the checkpoint file ``path`` and build its model: ``(model, checkpoint, info)``."""
    from common.checkpoint import load_checkpoint
    from model.checkpoint import model_from_checkpoint

    checkpoint = load_checkpoint(path)
    model, info = model_from_checkpoint(checkpoint, arch, path)
    return model, checkpoint, info
