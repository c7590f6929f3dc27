"""Running the project's command-line tools as a user does."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(*args, timeout=600, **kwargs):
    """Run ``python <args>`` from the project root as the toolkit runs its children
    (``common.children``: a deadline, killed with everything it started if this test ends
    first); returns the CompletedProcess."""
    from common import children

    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return children.run([sys.executable, *map(str, args)], timeout, cwd=ROOT, **kwargs)


# ``python -c BLOCK_MODEL script args...`` runs a script with every import of ``model`` refused:
# what runs an exported file must not need the model code.
BLOCK_MODEL = """
import runpy, sys
class NoModelCode:
    def find_spec(self, name, path=None, target=None):
        if name == "model" or name.startswith("model."):
            raise ImportError("infer.py imported the model code: " + name)
sys.meta_path.insert(0, NoModelCode())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def processes_mentioning(text):
    """Pids of live processes whose command line contains ``text`` (zombies excluded)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open("/proc/%s/stat" % pid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z" and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def descendants(pid):
    """``{pid: command line}`` of the live processes below ``pid`` (children, grandchildren...)."""
    parent_of, cmdline = {}, {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open("/proc/%s/cmdline" % p, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if fields[0] != "Z":
            parent_of[int(p)], cmdline[int(p)] = int(fields[1]), cmd
    found, frontier = {}, {pid}
    while frontier:
        frontier = {p for p, parent in parent_of.items() if parent in frontier and p not in found}
        found.update((p, cmdline[p]) for p in frontier)
    return found


def still_alive(pids):
    """The pids of ``pids`` that are still running (zombies count as gone)."""
    alive = []
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(p)
        except OSError:
            pass
    return alive


def assert_top_k(printed, probs, atol):
    """``printed``: ``[(class index, percent), ...]`` as a tool printed its top-k for one image;
    ``probs``: the model's probabilities for it, computed independently. Each printed value is
    that class's probability, the list is sorted, and no class left out beats the last one
    printed: near-ties (within ``atol`` percent) may come in either order, as kernels on
    another CPU round differently."""
    import numpy as np

    classes = [c for c, _ in printed]
    values = np.array([v for _, v in printed])
    assert len(set(classes)) == len(classes), printed
    np.testing.assert_allclose(values, 100 * probs[classes], atol=atol)
    assert (np.diff(values) <= 1e-9).all(), printed
    left_out = np.delete(probs, classes)
    if left_out.size:
        assert 100 * left_out.max() <= values.min() + atol, printed


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


def load_tool(path):
    """Import a command-line script (e.g. ``tools/eval.py``) as a module, without running it."""
    import importlib.util

    name = "tool_" + os.path.splitext(path)[0].replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_tool(path, *args):
    """Run a tool's ``main`` in this process as ``common.cli.run`` does (fast: no interpreter or
    MegEngine start-up); returns a CompletedProcess with returncode, stdout and stderr.

    The default MegEngine device is restored afterwards (tools choose their own)."""
    import contextlib
    import io

    import megengine as mge

    from common import cli

    module = load_tool(path)
    out, err = io.StringIO(), io.StringIO()
    device = mge.get_default_device()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.run(module.main, [str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        mge.set_default_device(device)
    return subprocess.CompletedProcess([path, *args], code, out.getvalue(), err.getvalue())
