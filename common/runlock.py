"""A run owns its output folder: a lock file naming the process that holds it.

``with RunLock(folder):`` creates ``folder/.lock`` exclusively, holding this process's pid and host
name. A second run into the same folder finds the lock, checks that its holder is still alive
and stops with one line naming the folder and the holder. A lock left by a killed run (its pid
no longer exists on this host) is taken over, so ``--resume`` after a SIGKILL works.
"""
import contextlib
import os
import socket

from errors import UserError

LOCK_NAME = ".lock"


class FolderInUseError(UserError):
    """Another live process is writing into the folder."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path):
    try:
        with open(path) as f:
            pid, _, host = f.read().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None, None


class RunLock:
    def __init__(self, folder):
        self.path = os.path.join(folder, LOCK_NAME)
        self.folder = folder
        self.held = False

    def acquire(self):
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:  # a read-only place, or a file where the folder should be
            raise UserError("cannot create the run folder %s (%s)"
                            % (self.folder, e.strerror or e)) from None
        me = "%d %s" % (os.getpid(), socket.gethostname())
        for _ in range(2):  # the second try follows the removal of a dead holder's lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid, host = _read(self.path)
                if pid is not None and (host != socket.gethostname() or _alive(pid)):
                    raise FolderInUseError(
                        "%s is in use by another run (process %d on %s); wait for it to finish "
                        "or choose another output folder" % (self.folder, pid, host)) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # the holder is gone (killed): take the folder over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.held = True
            return self
        raise FolderInUseError("%s: could not take the run lock %s" % (self.folder, self.path))

    def release(self):
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
