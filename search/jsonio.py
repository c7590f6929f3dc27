"""Writing JSON files atomically: a reader never sees a half-written file."""
import json

from common.atomic import atomic_write


def write_json(obj, path):
    """Atomic JSON write (``common.atomic``)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path
