"""The one way this project writes a file: atomically.

``atomic_path(path)`` yields a temp path in the target's folder; when the block ends without an
exception the temp file is flushed to disk and renamed onto ``path``, so a reader (or a run killed
mid-write) sees either the old file or the complete new one. On any failure the temp file is
removed and ``path`` is left as it was.

- The new file gets the permissions an ordinary ``open(path, "w")`` would give (0666 minus the
  umask), not ``mkstemp``'s 0600.
- A target that exists and is not a regular file (``/dev/null``, a folder, a fifo) is refused:
  renaming over it would replace a device node or fail half-way.
- Temp files are named ``.<name>.<pid>.tmp``; one left by a process that no longer exists (a
  SIGKILL mid-write) is removed by the next write to the same path.
"""
import contextlib
import glob
import json
import os
import re
import stat

from errors import UserError


class OutputPathError(UserError):
    """An output path that cannot be written."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temps(folder, name):
    pattern = re.compile(r"^\.%s\.(\d+)\.tmp$" % re.escape(name))
    for candidate in glob.glob(os.path.join(glob.escape(folder), ".%s.*.tmp" % glob.escape(name))):
        match = pattern.match(os.path.basename(candidate))
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(candidate)


def check_output_path(path):
    """Raise ``OutputPathError`` (one line) unless ``path`` can be (re)written as a regular file."""
    path = os.fspath(path)
    if not path or path.endswith(os.sep):
        raise OutputPathError("output path %r names a folder, not a file" % path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputPathError("cannot write %s (%s)" % (path, e.strerror)) from None
    if stat.S_ISDIR(mode):
        raise OutputPathError("output path %s is a folder; name a file" % path)
    if not stat.S_ISREG(mode):
        raise OutputPathError("output path %s exists and is not a regular file (a device or "
                              "pipe); refusing to replace it" % path)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = os.fspath(path)
    check_output_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    try:
        os.makedirs(folder, exist_ok=True)
        _remove_stale_temps(folder, name)
        tmp = os.path.join(folder, ".%s.%d.tmp" % (name, os.getpid()))
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
    except OSError as e:
        raise OutputPathError("cannot write %s (%s)" % (path, e.strerror or e)) from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        check_output_path(path)  # it may have appeared meanwhile
        os.replace(tmp, path)
    except OSError as e:
        raise OutputPathError("cannot write %s (%s)" % (path, e.strerror or e)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """``with atomic_write(path) as f: f.write(...)`` — an open file behind ``atomic_path``."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f


def write_json(obj, path):
    """Write ``obj`` as JSON (indent 1) through ``atomic_write``; returns ``path``."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path
