"""The train and validation splits a run uses, chosen by ``--dataset`` / ``--data``.

digits    scikit-learn's built-in handwritten digits (no download), upscaled to image_size;
          shift augmentation, no flips (a mirrored digit is a different or no digit).
cifar10/100  the CIFAR python-pickle files in a local folder; shift + flip, like the usual
          CIFAR recipe.
imagenet  an ImageNet-style folder with train/ and val/; the official recipe's random resized
          crop + flip, and resize + centre crop for evaluation.
"""
import os
from dataclasses import dataclass

from . import transforms as T
from .cifar import LAYOUT as CIFAR_LAYOUT
from .sources import ArraySource, DataError

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")


@dataclass
class Splits:
    train: object      # a source (see data/sources.py)
    val: object
    classes: tuple
    train_transform: object
    eval_transform: object


def detect_dataset(root):
    """The data set a ``--data`` folder holds: digits without one, cifar10 / cifar100 when it is
    (or contains) CIFAR's python-batch folder, imagenet (an image folder) otherwise."""
    if not root:
        return "digits"
    for dataset, (sub, train_files, _, _, meta, _) in CIFAR_LAYOUT.items():
        for folder in (root, os.path.join(root, sub)):
            if os.path.isfile(os.path.join(folder, train_files[0])) and (
                    dataset == "cifar10" or os.path.isfile(os.path.join(folder, meta))):
                return dataset
    return "imagenet"


def eval_transform(dataset, image_size):
    return T.imagenet_eval(image_size) if dataset == "imagenet" else T.small_eval(image_size)


def load_splits(dataset, root, image_size, seed=0, eval_size=None, augment=None):
    """The splits and their transforms; ``eval_size`` (default ``image_size``) for evaluation,
    ``augment`` an extra training-image policy ``t(image, rng)`` (``data.augment``)."""
    if dataset == "digits":
        from .digits import load_digits
        train, val, classes = load_digits(image_size=image_size, seed=seed)
        train = ArraySource(train.images, train.labels, classes, "digits train split")
        val = ArraySource(val.images, val.labels, classes, "digits val split")
        train_tf = T.small_train(image_size, flip=False, augment=augment)
    elif dataset in ("cifar10", "cifar100"):
        if not root:
            raise DataError("--dataset %s needs --data DIR (the folder with CIFAR's python "
                            "batch files)" % dataset)
        from .cifar import load_cifar
        train, val = load_cifar(root, dataset)
        classes = train.classes
        train_tf = T.small_train(image_size, flip=True, augment=augment)
    elif dataset == "imagenet":
        if not root:
            raise DataError("--dataset imagenet needs --data DIR (with train/ and val/)")
        from .imagefolder import load_image_folder
        train, val = load_image_folder(root)
        classes = train.classes
        train_tf = T.imagenet_train(image_size, augment=augment)
    else:
        raise DataError("unknown dataset %r; known: %s" % (dataset, ", ".join(DATASETS)))
    return Splits(train, val, tuple(classes), train_tf,
                  eval_transform(dataset, eval_size or image_size))


def default_image_size(dataset):
    return 224 if dataset == "imagenet" else 32


def checkpoint_data(checkpoint, dataset=None, root=None, image_size=None):
    """``(dataset, image_size)`` to evaluate or predict with a model checkpoint: the one rule
    ``tools/eval.py`` and ``tools/predict.py`` share.

    Given values win. Otherwise what the checkpoint records (train.py records its data set and
    size; tools/convert.py keeps them); a recorded ``digits`` with a ``--data`` folder means the
    folder's data set (digits are built in). A checkpoint that records nothing (a PyTorch import,
    a bare state dict) is taken as ImageNet at 224, the official weights' data, or the data set
    of the ``--data`` folder.
    """
    recorded = checkpoint if isinstance(checkpoint, dict) else {}
    if dataset is None:
        dataset = recorded.get("dataset")
        if dataset not in DATASETS or (root and dataset == "digits"):
            dataset = detect_dataset(root) if root else "imagenet"
    if image_size is None:
        same = dataset == recorded.get("dataset") or "dataset" not in recorded
        image_size = (same and recorded.get("image_size")) or default_image_size(dataset)
    return dataset, int(image_size)
