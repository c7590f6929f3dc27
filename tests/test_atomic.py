"""The one atomic writer (common/atomic.py) and the run-folder lock (common/runlock.py)."""
import os
import signal
import stat
import subprocess
import sys

import pytest

from common.atomic import OutputPathError, atomic_path, atomic_write
from common.runlock import FolderInUseError, RunLock
from errors import UserError


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_file_follows_the_umask(tmp_path, umask022):
    path = tmp_path / "out.bin"
    with atomic_write(path) as f:
        f.write(b"abc")
    assert path.read_bytes() == b"abc"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # mkstemp alone would give 0600


def test_replacing_keeps_umask_mode_and_leaves_no_temp(tmp_path, umask022):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    with atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_refuses_a_special_file_and_leaves_it_alone(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match="not a regular file"):
        with atomic_write(fifo) as f:
            f.write(b"x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


@pytest.mark.parametrize("make, target", [
    (lambda d: os.mkdir(d / "adir"), "adir"),
    (lambda d: None, "sub" + os.sep),
])
def test_folder_targets_are_one_line_errors(tmp_path, make, target):
    make(tmp_path)
    with pytest.raises(OutputPathError) as err:
        with atomic_path(str(tmp_path) + os.sep + target):
            pass
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)


def test_unwritable_folder_is_a_user_error(tmp_path):
    parent = tmp_path / "file"
    parent.write_text("x")
    with pytest.raises(OutputPathError, match="cannot write"):
        with atomic_write(parent / "out.bin") as f:  # a file where a folder should be
            f.write(b"x")


def test_stale_temp_of_a_killed_writer_is_removed(tmp_path):
    path = tmp_path / "ckpt.pkl"
    # a child starts writing and is SIGKILLed mid-write: its temp file stays behind
    code = ("import os, sys, time; sys.path.insert(0, %r)\n"
            "from common.atomic import atomic_write\n"
            "with atomic_write(%r) as f:\n"
            "    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
            % (os.getcwd(), str(path)))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    stale = ".ckpt.pkl.%d.tmp" % child.pid
    assert sorted(os.listdir(tmp_path)) == [stale]
    with atomic_write(path) as f:  # the next write to the same path cleans it up
        f.write(b"done")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pkl"]


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    folder = tmp_path / "run"
    with RunLock(str(folder)):
        with pytest.raises(FolderInUseError, match="in use by another run"):
            RunLock(str(folder)).acquire()
    assert not (folder / ".lock").exists()
    # a lock whose holder was killed does not block the next run (e.g. --resume)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (folder / ".lock").write_text("%d %s\n" % (child.pid, os.uname().nodename))
    with RunLock(str(folder)) as lock:
        assert lock.held
        assert (folder / ".lock").read_text().split()[0] == str(os.getpid())
