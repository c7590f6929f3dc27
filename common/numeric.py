"""Small numeric helpers shared by the tools: softmax and top-k."""
import numpy as np


def softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits, k=5):
    """Per row: ``[(class index, probability), ...]``, most probable first."""
    probs = softmax(np.asarray(logits, np.float64))
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[(int(i), float(p[i])) for i in row] for row, p in zip(order, probs)]
