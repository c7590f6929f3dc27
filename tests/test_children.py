"""common/children.py and common/lifeline.py: every child has a deadline, dies with its parent,
and leaves nothing running behind it."""
import os
import signal
import sys
import textwrap
import time

import pytest

from common import children
from helpers import processes_mentioning

# A command that starts a grandchild (in its own process group's reach) and then waits on it.
FAMILY = textwrap.dedent("""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", sys.argv[1]])
    print("started", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def wait_until(condition, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_a_finished_child_takes_what_it_started_with_it(tmp_path):
    marker = "marker-finished-%s" % tmp_path.name
    proc = children.run([sys.executable, "-c", FAMILY, marker, "0"], 60, capture_output=True,
                        text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "started", proc.stderr
    assert wait_until(lambda: not processes_mentioning(marker), 5)


def test_the_deadline_kills_the_whole_group_and_says_so_in_one_line(tmp_path):
    marker = "marker-deadline-%s" % tmp_path.name
    start = time.monotonic()
    with pytest.raises(children.ChildTimeout) as info:
        children.run([sys.executable, "-c", FAMILY, marker, "600"], 3, what="the sleeper",
                     capture_output=True, text=True)
    assert time.monotonic() - start < 3 + children.STOP_GRACE_S + 2
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the sleeper did not finish within 3 s and was stopped")
    assert wait_until(lambda: not processes_mentioning(marker), 5)


def test_a_failing_child_is_one_line_naming_its_last_words():
    code = "import sys; print('working', file=sys.stderr); sys.exit('broken: no such layer')"
    with pytest.raises(children.ChildError, match=r"^the tool failed \(broken: no such layer\)$"):
        children.run([sys.executable, "-c", code], 30, what="the tool", check=True,
                     capture_output=True, text=True)
    proc = children.run([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], 30,
                        capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL  # the lifeline ends the way its command did
    assert children.last_line(proc) == "killed by signal 9"


# A parent that starts a long child through children.run and is then SIGKILLed by the test.
PARENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from common import children
    children.run([sys.executable, "-c", sys.argv[2], sys.argv[3], "600"], 600)
""")


def test_children_die_with_a_parent_killed_by_sigkill(tmp_path):
    from helpers import ROOT

    marker = "marker-orphan-%s" % tmp_path.name
    parent = children.Child([sys.executable, "-c", PARENT, ROOT, FAMILY, marker], 120)
    with parent:
        # wait for the grandchild's sleeper: the whole family is up
        assert wait_until(lambda: len(processes_mentioning(marker)) >= 4, 30), \
            processes_mentioning(marker)
        # the parent process itself (the command under the test's lifeline)
        inner = (set(processes_mentioning(marker))
                 & set(processes_mentioning("from common import children")) - {parent.pid})
        assert inner
        for pid in inner:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not processes_mentioning(marker), 10), \
            processes_mentioning(marker)


def test_fault_points_fail_or_hang_only_where_named(monkeypatch):
    code = "import sys; sys.path.insert(0, %r); from common.children import fault_point; " \
           "fault_point('here'); print('passed')"
    from helpers import ROOT

    env = dict(os.environ, REPVGG_FAULT="elsewhere:fail")
    ok = children.run([sys.executable, "-c", code % ROOT], 30, capture_output=True, text=True,
                      env=env)
    assert ok.stdout.strip() == "passed"
    env["REPVGG_FAULT"] = "here:fail"
    failed = children.run([sys.executable, "-c", code % ROOT], 30, capture_output=True,
                          text=True, env=env)
    assert failed.returncode != 0 and "injected fault at here" in failed.stderr
    env["REPVGG_FAULT"] = "here:hang"
    with pytest.raises(children.ChildTimeout):
        children.run([sys.executable, "-c", code % ROOT], 2, capture_output=True, text=True,
                     env=env)
