"""Where a weight file named by a path or a URL lies on this machine.

A local path, or a ``file://`` URL, is used where it is. An ``http(s)://`` URL is downloaded once
into a cache folder (MegEngine's, ``$MGE_HOME/serialized``, or ``cache_dir``) under a name that
includes a hash of the URL, written atomically (``common.atomic``), so a download cut short
never leaves a file that looks complete. Nothing is executed from the file:
it is then read by ``ckpt_converter.convert``.
"""
import hashlib
import logging
import os
import shutil
import urllib.parse
import urllib.request

from common.atomic import atomic_write

from .errors import ConverterError

log = logging.getLogger(__name__)


def cache_folder():
    """MegEngine's cache for serialized objects (``megengine.hub`` uses the same one)."""
    home = os.getenv("MGE_HOME") or os.path.join(
        os.getenv("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "megengine")
    return os.path.join(os.path.expanduser(home), "serialized")


def _download(url, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with atomic_write(target) as f:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
                shutil.copyfileobj(response, f, 1 << 20)
        except (OSError, ValueError) as e:
            raise ConverterError("cannot download %s (%s)" % (url, e)) from None


def weight_file(source, cache_dir=None):
    """The local path of the weight file ``source`` (a path, ``file://``, ``http(s)://``)."""
    source = os.fspath(source)
    parts = urllib.parse.urlparse(source)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConverterError("file URL %s names another host (%s)" % (source, parts.netloc))
        return urllib.request.url2pathname(parts.path)
    if parts.scheme in ("http", "https"):
        digest = hashlib.sha256(source.encode()).hexdigest()[:8]
        name = os.path.basename(parts.path) or "weights"
        target = os.path.join(cache_dir or cache_folder(), "%s_%s" % (digest, name))
        if not os.path.exists(target):
            log.info("downloading %s to %s", source, target)
            _download(source, target)
        return target
    if parts.scheme and len(parts.scheme) > 1:  # (a one-letter scheme is a Windows drive)
        raise ConverterError("unsupported URL scheme %r in %s (use a path, file://, http:// "
                             "or https://)" % (parts.scheme, source))
    return source
