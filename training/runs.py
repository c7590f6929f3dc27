"""Which folder a run writes into, and owning it for the whole run.

Without ``--output`` a run goes to ``runs/<arch>-<dataset>``, or ``-2``, ``-3`` ... when that
folder holds a run (a ``latest.pkl``) or is in use by a live process (its run lock);
``--resume`` without ``--output`` continues the run whose ``latest.pkl`` was written last.
The folder is held with ``common.runlock.RunLock`` from the start to the end of the run, so a
second run into it is refused with one line; a lock left by a killed run is taken over.
A start that fails (bad data, weights that do not fit) removes the folder again if it created
it and nothing else was written there.
"""
import contextlib
import os

from common.runlock import FolderInUseError, RunLock
from errors import UserError

from .config import arch_stem

LATEST = "latest.pkl"


def candidates(arch, dataset, root="runs"):
    base = os.path.join(root, "%s-%s" % (arch_stem(arch), dataset))
    return [base] + ["%s-%d" % (base, i) for i in range(2, 1000)]


def newest_run(arch, dataset, root="runs"):
    """The candidate folder whose latest.pkl was modified last, or None."""
    found = [(os.path.getmtime(os.path.join(c, LATEST)), c)
             for c in candidates(arch, dataset, root) if os.path.isfile(os.path.join(c, LATEST))]
    return max(found)[1] if found else None


class RunFolder:
    """``with RunFolder(config) as folder:`` — choose the output folder and hold its lock.

    ``folder.path`` is the folder. ``started()`` marks that the run wrote its first output; if
    the block fails before that, a folder this object created is removed again.
    """

    def __init__(self, output, arch, dataset, resume, root="runs"):
        self.output, self.arch, self.dataset, self.resume = output, arch, dataset, resume
        self.root = root
        self.path = None
        self.lock = None
        self.created = False
        self.kept = False

    def _take(self, path):
        self.created = not os.path.exists(path)
        lock = RunLock(path)
        try:
            lock.acquire()
        except FolderInUseError:
            self._cleanup_folder(path)
            raise
        except OSError as e:
            self._cleanup_folder(path)
            raise UserError("cannot write into the run folder %s (%s)"
                            % (path, e.strerror or e)) from None
        self.lock, self.path = lock, path
        if self.resume and not os.path.isfile(os.path.join(path, LATEST)):
            raise UserError("--resume: no checkpoint at %s (nothing to resume; run without "
                            "--resume to start)" % os.path.join(path, LATEST))
        if not self.resume and os.path.exists(os.path.join(path, LATEST)):
            raise UserError("%s already holds a run; pass --resume to continue it or choose "
                            "another --output" % path)

    def _cleanup_folder(self, path):
        if self.created:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only when empty: nothing of anyone's is removed

    def __enter__(self):
        if self.output:
            if os.path.exists(self.output) and not os.path.isdir(self.output):
                raise UserError("--output %s exists and is not a folder" % self.output)
            try:
                self._take(self.output)
            except BaseException:
                self.__exit__(None, None, None)
                raise
            return self
        if self.resume:
            newest = newest_run(self.arch, self.dataset, self.root)
            if newest is None:
                raise UserError("--resume: no run to continue in %s or its -2, -3 ... "
                                "(nothing to resume; run without --resume to start, or name "
                                "the run with --output DIR)"
                                % candidates(self.arch, self.dataset, self.root)[0])
            try:
                self._take(newest)
            except BaseException:
                self.__exit__(None, None, None)
                raise
            return self
        for path in candidates(self.arch, self.dataset, self.root):
            if os.path.exists(os.path.join(path, LATEST)):
                continue
            try:
                self._take(path)
            except FolderInUseError:
                continue
            except BaseException:
                self.__exit__(None, None, None)
                raise
            return self
        raise UserError("no free run folder under %s; pass --output" % self.root)

    def started(self):
        """The run has written its outputs: keep the folder whatever happens next."""
        self.kept = True

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.path and not self.kept:
            self._cleanup_folder(self.path)
        return False
