"""Files written by real PyTorch for the converter tests, made on demand by the torch venv.

``torch_fixtures`` (session-scoped) runs tests/torch_ref/make_fixtures.py under
``.torchvenv/bin/python`` when the fixtures are missing or older than the scripts that make them.
Without the torch venv the tests FAIL (never skip): run ``make setup-torch``.
"""
import functools
import json
import os
import shutil

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PY = os.path.join(ROOT, ".torchvenv", "bin", "python")
TORCH_REF = os.path.join(ROOT, "tests", "torch_ref")
FIXTURES = os.path.join(ROOT, "tests", ".fixtures", "torch")
SOURCES = [os.path.join(TORCH_REF, "make_fixtures.py"),
           os.path.join(ROOT, "torch_reference", "repvgg.py")]
LAYOUT_FIXTURES = os.path.join(ROOT, "tests", ".fixtures", "layouts")
# the libraries whose checkpoint layouts tests/torch_ref/layout_fixtures.py writes
LIBRARIES = ("timm", "mmpretrain", "basecls", "paddleclas")


def require_torch_venv():
    if not os.path.exists(TORCH_PY):
        pytest.fail("the PyTorch venv %s is missing; these tests compare against real PyTorch: "
                    "run `make setup-torch` (or `make test`, which does it)" % TORCH_PY,
                    pytrace=False)


def run_torch(*args, timeout=300):
    """Run a script under the torch venv from the project root; fail the test on error."""
    require_torch_venv()
    from common import children

    proc = children.run([TORCH_PY, *map(str, args)], timeout, cwd=ROOT, capture_output=True,
                        text=True)
    if proc.returncode != 0:
        pytest.fail("torch venv command %s failed:\n%s" % (args, proc.stderr[-3000:]),
                    pytrace=False)
    return proc


def _stale(folder, sources):
    manifest = os.path.join(folder, "manifest.json")
    if not os.path.exists(manifest):
        return True
    return os.path.getmtime(manifest) < max(os.path.getmtime(p) for p in sources)


def _generate(folder, sources, *args):
    """Run a fixture script into a temp folder and rename it into place, if ``folder`` is
    missing or older than ``sources``; returns the folder's manifest."""
    if _stale(folder, sources):
        tmp = folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run_torch(*args[:1], tmp, *args[1:])
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        os.replace(tmp, folder)
    with open(os.path.join(folder, "manifest.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def torch_fixtures():
    """(folder, manifest) of the PyTorch-written fixtures; generated when missing or stale."""
    return FIXTURES, _generate(FIXTURES, SOURCES, os.path.join(TORCH_REF, "make_fixtures.py"))


@pytest.fixture(scope="session")
def layout_fixtures(torch_fixtures):
    """{library: (folder, manifest)} of the checkpoints written by timm, mmpretrain and
    PaddleClas (and built in basecls's published layout) on the torch fixtures' input;
    generated when missing or stale."""
    script = os.path.join(TORCH_REF, "layout_fixtures.py")
    sources = SOURCES + [script]
    x = os.path.join(torch_fixtures[0], "input.npy")
    out = {}
    for library in LIBRARIES:
        folder = os.path.join(LAYOUT_FIXTURES, library)
        out[library] = folder, _generate(folder, sources, script, library, x)
    return out


def megengine_builder(spec):
    """The converter's ``arch`` for a fixture spec: a registered name, or a builder."""
    import model
    from model.repvgg import GROUPWISE_LAYERS

    if "name" in spec:
        return spec["name"]
    if spec["family"] == "RepVGGplus":
        return functools.partial(model.RepVGGplus, spec["num_blocks"],
                                 width_multiplier=spec["width"], use_post_se=True)
    groups = {layer: spec["groups"] for layer in GROUPWISE_LAYERS} if spec["groups"] > 1 else None
    return functools.partial(model.RepVGG, spec["num_blocks"], width_multiplier=spec["width"],
                             override_groups_map=groups, use_se=spec["use_se"])


def assert_logits_close(actual, expected):
    """Equal to float32 rounding: max |difference| <= 1e-5 x the largest |logit|."""
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    diff = float(np.abs(actual - expected).max())
    assert diff <= 1e-5 * scale, "max |d| = %.3g vs largest |logit| %.3g" % (diff, scale)
