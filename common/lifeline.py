"""The supervisor between the toolkit and every process it starts (``common/children.py``).

    python common/lifeline.py PARENT_PID DEADLINE_S RLIMIT_AS N PATH_1 ... PATH_N COMMAND [ARG...]

It runs COMMAND in a process group of its own and guarantees three things, whatever COMMAND
does (MegEngine can hang in its exit handlers after a kernel error, holding every thread):

- **a deadline**: after DEADLINE_S seconds the whole group is killed and the lifeline exits
  with ``DEADLINE_EXIT``;
- **death with the parent**: when PARENT_PID dies (even by SIGKILL: the kernel sends this
  process SIGTERM through ``PR_SET_PDEATHSIG``, and a poll of the parent pid backs it up) the
  group is killed;
- **no leftovers**: when COMMAND exits, whatever it left running in its group (a fork server,
  a worker) is killed. PATH_1 ... PATH_N (scratch files or folders the parent made for the
  command) are removed when the parent can no longer do it: at the deadline, or when the
  parent died.

RLIMIT_AS (bytes; 0: none) is COMMAND's address-space limit, set between fork and exec, so a
native parser that a crafted file drives into allocating fails an allocation instead of
exhausting the machine (``common.limits.child_address_space``); the lifeline itself runs
without it.

COMMAND itself dies by SIGKILL if the lifeline does. The lifeline is single-threaded, so setting
that up between fork and exec is safe here (it is not in a parent running MegEngine's threads,
which is why this process exists). Standard library only: it runs under any interpreter.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

DEADLINE_EXIT = 124  # as timeout(1)
POLL_S = 0.25
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig):
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux); False where
    that is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove(paths):
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def _exec_setup(rlimit_as):
    """The forked command's set-up before exec: it dies when the lifeline dies, and gets its
    address-space limit (``rlimit_as`` bytes; 0: none)."""
    def setup():
        set_parent_death_signal(signal.SIGKILL)
        if rlimit_as:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (rlimit_as, rlimit_as))
    return setup


def main(argv):
    parent, deadline, rlimit_as, n = int(argv[0]), float(argv[1]), int(argv[2]), int(argv[3])
    scratch, command = argv[4:4 + n], argv[4 + n:]
    child = None

    def stop(signum=None, frame=None):
        if child is not None:
            _kill_group(child.pid)
        _remove(scratch)
        os._exit(128 + (signum or signal.SIGKILL))

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above
        stop()
    child = subprocess.Popen(command, start_new_session=True, preexec_fn=_exec_setup(rlimit_as))
    end = time.monotonic() + deadline
    while True:
        try:
            code = child.wait(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:
                stop()
            if time.monotonic() > end:
                _kill_group(child.pid)
                child.wait()
                _remove(scratch)
                os._exit(DEADLINE_EXIT)
    _kill_group(child.pid)  # leftovers of the finished command
    if code < 0:  # killed by a signal: end the same way, so the parent sees it
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
