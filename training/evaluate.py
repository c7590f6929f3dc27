"""Evaluating a model on a loader: mean loss, top-1 and top-5 accuracy.

Independent of the training loop, so evaluation tools need not import it.
"""
import numpy as np
from tqdm import tqdm

import megengine as mge
import megengine.functional as F


def topk_correct(logits, labels, ks=(1, 5)):
    """How many rows have their label among the top-k scores, for each k."""
    order = np.argsort(-logits, axis=1)
    hits = order == labels[:, None]
    return [int(hits[:, :k].any(axis=1).sum()) for k in ks]


def evaluate(model, loader, label_smoothing=0.0, desc="val", progress=True):
    """(mean loss, top-1 %, top-5 %) of ``model`` in eval mode over ``loader``."""
    model.eval()
    total = loss_sum = c1 = c5 = 0
    for images, labels, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
        logits = model(mge.tensor(images))
        loss = F.nn.cross_entropy(logits, mge.tensor(labels), label_smooth=label_smoothing)
        n = len(labels)
        loss_sum += float(loss.numpy()) * n
        h1, h5 = topk_correct(logits.numpy(), labels)
        total, c1, c5 = total + n, c1 + h1, c5 + h5
    return loss_sum / total, 100.0 * c1 / total, 100.0 * c5 / total
