"""Files written by real PyTorch for the converter tests, made on demand by the torch venv.

``torch_fixtures`` (session-scoped) runs tests/torch_ref/make_fixtures.py under
``.torchvenv/bin/python`` when the fixtures are missing or older than the scripts that make them.
Without the torch venv the tests FAIL (never skip): run ``make setup-torch``.
"""
import functools
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PY = os.path.join(ROOT, ".torchvenv", "bin", "python")
TORCH_REF = os.path.join(ROOT, "tests", "torch_ref")
FIXTURES = os.path.join(ROOT, "tests", ".fixtures", "torch")
SOURCES = [os.path.join(TORCH_REF, name) for name in ("make_fixtures.py", "repvgg_ref.py")]


def require_torch_venv():
    if not os.path.exists(TORCH_PY):
        pytest.fail("the PyTorch venv %s is missing; these tests compare against real PyTorch: "
                    "run `make setup-torch` (or `make test`, which does it)" % TORCH_PY,
                    pytrace=False)


def run_torch(*args, timeout=300):
    """Run a script under the torch venv from the project root; fail the test on error."""
    require_torch_venv()
    proc = subprocess.run([TORCH_PY, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        pytest.fail("torch venv command %s failed:\n%s" % (args, proc.stderr[-3000:]),
                    pytrace=False)
    return proc


def _stale():
    manifest = os.path.join(FIXTURES, "manifest.json")
    if not os.path.exists(manifest):
        return True
    return os.path.getmtime(manifest) < max(os.path.getmtime(p) for p in SOURCES)


@pytest.fixture(scope="session")
def torch_fixtures():
    """(folder, manifest) of the PyTorch-written fixtures; generated when missing or stale."""
    if _stale():
        tmp = FIXTURES + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run_torch(os.path.join(TORCH_REF, "make_fixtures.py"), tmp)
        shutil.rmtree(FIXTURES, ignore_errors=True)
        os.replace(tmp, FIXTURES)
    with open(os.path.join(FIXTURES, "manifest.json")) as f:
        return FIXTURES, json.load(f)


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
