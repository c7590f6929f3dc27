"""The run's log: train.log in the run folder (appended to on resume) and the console."""
import logging

log = logging.getLogger("train")


def setup_logging(path=None):
    """Log the ``train`` logger to ``path`` (appending, so a resumed run keeps its history) and
    to stderr; returns the logger."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler()] + ([logging.FileHandler(path)] if path else [])
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    return log


def close_logging():
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
