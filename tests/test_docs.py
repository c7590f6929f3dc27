"""The documentation's runnable commands run: every shell block of README.md and docs/*.md whose
fence says ``bash runnable`` is executed from the project root, so a renamed flag, a moved
script or a changed default breaks a test instead of a reader. What the blocks write to /tmp
(their paths, ``mktemp``) goes to one scratch folder instead, removed after the last block."""
import glob
import os
import re
import shutil
import tempfile

import pytest

from common import children
from helpers import ROOT

FENCE = re.compile(r"^```bash runnable\n(.*?)^```", re.M | re.S)
# A hang guard, not a speed test: the backbone example fine-tunes for ~4 min here and took over
# 5 min on a slower CI machine; pytest-timeout's 300 s default is raised to match for these blocks.
DEADLINE_S = 900


def runnable_blocks():
    """``(file, block text)`` for every runnable block, in file order."""
    files = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs",
                                                                              "*.md")))
    blocks = []
    for path in files:
        with open(path) as f:
            text = f.read()
        blocks += [(os.path.relpath(path, ROOT), m.group(1)) for m in FENCE.finditer(text)]
    return blocks


@pytest.fixture(scope="module")
def scratch():
    path = tempfile.mkdtemp(prefix="docs-blocks-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_block(text, scratch):
    """The block in bash with -euo pipefail; /tmp/ paths and TMPDIR point into ``scratch``."""
    text = re.sub(r"(?<![\w.])/tmp/", scratch + "/", text)
    return children.run(["bash", "-euo", "pipefail", "-c", text], DEADLINE_S, what="the block",
                        cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, "TMPDIR": scratch})


BLOCKS = runnable_blocks()


def test_the_docs_have_runnable_blocks_on_every_page():
    pages = {page for page, _ in BLOCKS}
    assert "README.md" in pages
    expected = {"docs/%s.md" % p for p in ("models", "checkpoints", "training", "deployment",
                                            "int8", "search", "binary")}
    assert expected <= pages, expected - pages


@pytest.mark.timeout(DEADLINE_S + 60)
@pytest.mark.parametrize("page,text", BLOCKS,
                         ids=["%s:%d" % (p, i) for i, (p, _) in enumerate(BLOCKS)])
def test_a_runnable_block_runs(page, text, scratch):
    proc = run_block(text, scratch)
    assert proc.returncode == 0, "%s:\n%s\n%s" % (page, text, proc.stderr[-3000:])


def test_a_renamed_flag_fails_the_block(scratch):
    # The check above can fail: the first documented --flag, misspelt, makes its block fail.
    page, text = next((p, t) for p, t in BLOCKS if re.search(r" --[a-z]", t))
    broken = re.sub(r" --([a-z][a-z-]*)", r" --\1-renamed", text, count=1)
    assert broken != text
    assert run_block(broken, scratch).returncode != 0, (page, broken)
