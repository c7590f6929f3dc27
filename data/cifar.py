"""CIFAR-10 / CIFAR-100 in their "python version" format, read from a local folder.

``--data DIR`` may be the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its
parent. Each batch file is a (Python 2) pickle of a dict with ``data`` (N x 3072 uint8, planes R,
G, B of 32x32) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). Files are read with the
allow-list unpickler, so a batch file cannot run code.
"""
import os

import numpy as np

from common.safe_pickle import safe_load

from .sources import ArraySource, DataError

LAYOUT = {
    # dataset: (sub-folder, train files, test files, label key, meta file, names key)
    "cifar10": ("cifar-10-batches-py", ["data_batch_%d" % i for i in range(1, 6)],
                ["test_batch"], b"labels", "batches.meta", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", "meta",
                 b"fine_label_names"),
}


def _read(path):
    if not os.path.isfile(path):
        raise DataError("missing CIFAR file %s" % path)
    try:
        with open(path, "rb") as f:
            return safe_load(f, encoding="bytes")
    except Exception as e:
        raise DataError("cannot read CIFAR file %s (%s: %s)" % (path, type(e).__name__, e))


def _batch(path, label_key):
    d = _read(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise DataError("%s is not a CIFAR batch (needs 'data' and '%s')"
                        % (path, label_key.decode()))
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[label_key], np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError("%s: expected data of shape (N, 3072) and N labels, got %s and %d"
                        % (path, data.shape, len(labels)))
    return data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar(root, dataset="cifar10"):
    """``(train_source, val_source)``; val is CIFAR's test split."""
    sub, train_files, test_files, label_key, meta, names_key = LAYOUT[dataset]
    folder = os.path.join(root, sub) if os.path.isdir(os.path.join(root, sub)) else root
    if not os.path.isdir(folder):
        raise DataError("data folder not found: %s" % root)
    num_classes = 10 if dataset == "cifar10" else 100
    classes = [str(i) for i in range(num_classes)]
    if os.path.isfile(os.path.join(folder, meta)):
        names = _read(os.path.join(folder, meta)).get(names_key)
        if names and len(names) == num_classes:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    splits = []
    for files, split in ((train_files, "train"), (test_files, "test")):
        parts = [_batch(os.path.join(folder, f), label_key) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError("%s %s split has labels outside 0..%d" % (folder, split,
                                                                      num_classes - 1))
        splits.append(ArraySource(images, labels, classes, "%s %s split" % (folder, split)))
    return tuple(splits)
