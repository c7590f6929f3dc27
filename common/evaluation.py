"""Loss and top-1 / top-5 accuracy of a model over a loader from ``data.loader.make_loader``.

Unreadable images are left out and counted: the loader replaces an unreadable sample by the next
readable one and marks the row (``skipped >= 0``); counting that row would count the substitute
twice, so it is dropped here and the file is named in a warning. Used by ``tools/eval.py``, the
training loop's validation and the end-of-run deploy check.
"""
import dataclasses
import logging

import numpy as np

import megengine as mge
import megengine.functional as F

from errors import UserError

from .progress import progress as progress_display

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalResult:
    loss: float
    top1: float        # percent
    top5: float        # percent
    images: int        # images counted
    skipped: list      # descriptions (file names) of the unreadable images left out


def topk_correct(logits, labels, ks=(1, 5)):
    """How many rows have their label among the top-k scores, for each k."""
    order = np.argsort(-logits, axis=1)
    hits = order == labels[:, None]
    return [int(hits[:, :k].any(axis=1).sum()) for k in ks]


def evaluate(model, loader, source=None, label_smoothing=0.0, desc="val", progress=True,
             warn=True):
    """``EvalResult`` of ``model`` in eval mode over ``loader``; ``source`` (the loader's data
    source; default: the one ``data.loader.make_loader`` keeps) names skipped files in the
    warnings; ``warn=False`` only counts them (a second pass over images already named)."""
    source = source if source is not None else getattr(loader, "source", None)
    model.eval()
    total = loss_sum = c1 = c5 = 0
    skipped = []
    for images, labels, bad in progress_display(loader, desc=desc, unit="batch", leave=False,
                                                enabled=progress):
        bad = np.asarray(bad)
        keep = bad < 0
        for i in bad[~keep]:
            name = source.describe(int(i)) if source is not None else "#%d" % i
            if warn:
                log.warning("skipped unreadable image %s", name)
            skipped.append(name)
        if not keep.any():
            continue
        images, labels = np.asarray(images)[keep], np.asarray(labels)[keep]
        logits = model(mge.tensor(images))
        loss = F.nn.cross_entropy(logits, mge.tensor(labels), label_smooth=label_smoothing)
        n = len(labels)
        loss_sum += float(loss.numpy()) * n
        h1, h5 = topk_correct(logits.numpy(), labels)
        total, c1, c5 = total + n, c1 + h1, c5 + h5
    if total == 0:
        raise UserError("no readable image to evaluate (%d unreadable)" % len(skipped))
    return EvalResult(loss_sum / total, 100.0 * c1 / total, 100.0 * c5 / total, total, skipped)
