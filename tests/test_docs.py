"""The documentation's runnable commands run: every shell block of README.md and docs/*.md whose
fence says ``bash runnable`` is executed from the project root, so a renamed flag, a moved
script or a changed default breaks a test instead of a reader."""
import glob
import os
import re

import pytest

from common import children
from helpers import ROOT

FENCE = re.compile(r"^```bash runnable\n(.*?)^```", re.M | re.S)
DEADLINE_S = 240


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


def run_block(text):
    return children.run(["bash", "-euo", "pipefail", "-c", text], DEADLINE_S, what="the block",
                        cwd=ROOT, capture_output=True, text=True)


BLOCKS = runnable_blocks()


def test_the_docs_have_runnable_blocks_on_every_page():
    pages = {page for page, _ in BLOCKS}
    assert "README.md" in pages
    expected = {"docs/%s.md" % p for p in ("models", "checkpoints", "training", "deployment",
                                            "int8", "search", "binary")}
    assert expected <= pages, expected - pages


@pytest.mark.parametrize("page,text", BLOCKS,
                         ids=["%s:%d" % (p, i) for i, (p, _) in enumerate(BLOCKS)])
def test_a_runnable_block_runs(page, text):
    proc = run_block(text)
    assert proc.returncode == 0, "%s:\n%s\n%s" % (page, text, proc.stderr[-3000:])


def test_a_renamed_flag_fails_the_block():
    # The check above can fail: the first documented --flag, misspelt, makes its block fail.
    page, text = next((p, t) for p, t in BLOCKS if re.search(r" --[a-z]", t))
    broken = re.sub(r" --([a-z][a-z-]*)", r" --\1-renamed", text, count=1)
    assert broken != text
    assert run_block(broken).returncode != 0, (page, broken)
