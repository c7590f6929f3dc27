"""Every process the toolkit starts: with a deadline, and never outliving its parent.

``run(cmd, deadline, what)`` is ``subprocess.run`` for the toolkit: ``cmd`` runs under
``common/lifeline.py`` in a process group of its own, is killed with everything it started when
the deadline passes or when this process dies (even by SIGKILL), and a child that fails or runs
out of time is a ``ChildError`` whose message is one line. ``Child`` is the same for a process
that runs beside the caller (``with Child(cmd, deadline) as c: ...``; it is killed on leaving
the block). Loader workers, which MegEngine forks itself, are tied to their parent by
``data/loader.py`` (``lifeline.set_parent_death_signal``).

Fault injection for the tests: ``REPVGG_FAULT=<point>:<fail|hang>`` in a child's environment
makes ``fault_point(point)`` there exit with an error or hang (``deploy/algo_profile.py`` has
such points), so the fallbacks are tested on every CPU.
"""
import os
import signal
import subprocess
import sys
import time

from errors import UserError

from .lifeline import DEADLINE_EXIT

LIFELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lifeline.py")
STOP_GRACE_S = 5.0  # after the deadline, the lifeline's own kill gets this long to happen
FAULT_ENV = "REPVGG_FAULT"


class ChildError(UserError):
    """A child process that failed, with the last line it printed."""


class ChildTimeout(ChildError):
    """A child process that did not finish within its deadline (it was killed)."""


def command(cmd, deadline, scratch=(), rlimit_as=None):
    """``cmd`` wrapped in the lifeline: run by this interpreter, tied to this process; the
    ``scratch`` paths are removed if this process dies first or the deadline passes.
    ``rlimit_as``: the command's address-space limit in bytes (RLIMIT_AS; None: none)."""
    return [sys.executable, LIFELINE, str(os.getpid()), "%.3f" % deadline,
            str(int(rlimit_as or 0)), str(len(scratch)), *map(str, scratch), *map(str, cmd)]


def _stop(proc):
    """End the lifeline (which kills its group) and reap it; SIGKILL if it does not go."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass


class Child:
    """A process started through the lifeline (``subprocess.Popen`` arguments), killed when the
    ``with`` block ends or this process dies; ``wait`` raises ``ChildTimeout`` at the deadline.
    ``rlimit_as``: the command's address-space limit in bytes (None: none)."""

    def __init__(self, cmd, deadline, what=None, scratch=(), rlimit_as=None, **popen_kwargs):
        self.what = what or os.path.basename(str(cmd[0]))
        self.deadline = deadline
        self.started = time.monotonic()
        self.proc = subprocess.Popen(command(cmd, deadline, scratch, rlimit_as),
                                     start_new_session=True, **popen_kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def pid(self):
        """The lifeline's pid (the command runs as its child)."""
        return self.proc.pid

    def stop(self):
        _stop(self.proc)

    def timed_out(self, returncode):
        return (returncode == DEADLINE_EXIT
                and time.monotonic() - self.started >= self.deadline)

    def communicate(self, input=None):
        """``Popen.communicate`` bounded by the deadline; ``ChildTimeout`` when it passes."""
        left = self.deadline - (time.monotonic() - self.started) + STOP_GRACE_S
        try:
            out, err = self.proc.communicate(input, timeout=max(left, 0.1))
        except subprocess.TimeoutExpired:
            self.stop()
            out, err = self.proc.communicate()  # what it printed before it was stopped
            raise self._timeout(err) from None
        except BaseException:  # Ctrl-C, a test's timeout: the child goes too
            self.stop()
            raise
        if self.timed_out(self.proc.returncode):
            raise self._timeout(err)
        return out, err

    def wait(self):
        return self.communicate()

    def _timeout(self, err=None):
        said = _last_line(err)
        return ChildTimeout("%s did not finish within %s s and was stopped%s"
                            % (self.what, _seconds(self.deadline),
                               " (its last words: %s)" % said if said else ""))


def run(cmd, deadline, what=None, check=False, input=None, scratch=(), rlimit_as=None,
        **popen_kwargs):
    """Run ``cmd`` to its end (at most ``deadline`` seconds): a ``CompletedProcess``.
    ``scratch``: files or folders the child's lifeline removes if this process is killed
    meanwhile, or at the deadline (otherwise they are the caller's to remove). ``rlimit_as``:
    the command's address-space limit in bytes (RLIMIT_AS, set just before it is exec'd).

    ``check``: a non-zero exit is a ``ChildError`` naming ``what`` and the child's last stderr
    line. ``capture_output``, ``text``, ``cwd``, ``env`` ... as for ``subprocess.run``."""
    if popen_kwargs.pop("capture_output", False):
        popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if input is not None:
        popen_kwargs.setdefault("stdin", subprocess.PIPE)
    with Child(cmd, deadline, what, scratch, rlimit_as, **popen_kwargs) as child:
        out, err = child.communicate(input)
    proc = subprocess.CompletedProcess(cmd, child.proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise ChildError("%s failed (%s)" % (child.what, last_line(proc)))
    return proc


def last_line(proc):
    """The last non-empty stderr line of a finished child, or its exit status."""
    said = _last_line(proc.stderr)
    if said:
        return said
    if proc.returncode < 0:
        return "killed by signal %d" % -proc.returncode
    return "exit status %d" % proc.returncode


def _last_line(err):
    if isinstance(err, bytes):
        err = err.decode("utf-8", "replace")
    lines = [l.strip() for l in (err or "").splitlines() if l.strip()]
    return lines[-1][:300] if lines else None


def fault_point(point):
    """Inject the fault ``REPVGG_FAULT`` names for ``point`` (tests only): ``fail`` exits with
    an error, ``hang`` never returns."""
    spec = os.environ.get(FAULT_ENV, "")
    for item in filter(None, spec.split(",")):
        name, _, kind = item.partition(":")
        if name != point:
            continue
        if kind == "hang":
            while True:
                time.sleep(3600)
        sys.stderr.write("injected fault at %s\n" % point)
        sys.stderr.flush()
        os._exit(3)


def _seconds(s):
    return ("%d" % s) if float(s).is_integer() else ("%.1f" % s)
