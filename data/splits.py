"""The train and validation splits a run uses, chosen by ``--dataset`` / ``--data``.

digits    scikit-learn's built-in handwritten digits (no download), upscaled to image_size;
          shift augmentation, no flips (a mirrored digit is a different or no digit).
cifar10/100  the CIFAR python-pickle files in a local folder; shift + flip, like the usual
          CIFAR recipe.
imagenet  an ImageNet-style folder with train/ and val/; the official recipe's random resized
          crop + flip, and resize + centre crop for evaluation.
"""
from dataclasses import dataclass

from . import transforms as T
from .sources import ArraySource, DataError

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")


@dataclass
class Splits:
    train: object      # a source (see data/sources.py)
    val: object
    classes: tuple
    train_transform: object
    eval_transform: object


def eval_transform(dataset, image_size):
    return T.imagenet_eval(image_size) if dataset == "imagenet" else T.small_eval(image_size)


def load_splits(dataset, root, image_size, seed=0):
    if dataset == "digits":
        from .digits import load_digits
        train, val, classes = load_digits(image_size=image_size, seed=seed)
        train = ArraySource(train.images, train.labels, classes, "digits train split")
        val = ArraySource(val.images, val.labels, classes, "digits val split")
        train_tf = T.small_train(image_size, flip=False)
    elif dataset in ("cifar10", "cifar100"):
        if not root:
            raise DataError("--dataset %s needs --data DIR (the folder with CIFAR's python "
                            "batch files)" % dataset)
        from .cifar import load_cifar
        train, val = load_cifar(root, dataset)
        classes = train.classes
        train_tf = T.small_train(image_size, flip=True)
    elif dataset == "imagenet":
        if not root:
            raise DataError("--dataset imagenet needs --data DIR (with train/ and val/)")
        from .imagefolder import load_image_folder
        train, val = load_image_folder(root)
        classes = train.classes
        train_tf = T.imagenet_train(image_size)
    else:
        raise DataError("unknown dataset %r; known: %s" % (dataset, ", ".join(DATASETS)))
    return Splits(train, val, tuple(classes), train_tf, eval_transform(dataset, image_size))


def detect_dataset(root):
    """The data set a ``--data`` folder holds: cifar10 for CIFAR-10's python batches (the
    folder itself or its ``cifar-10-batches-py``), imagenet (train/ and val/ folders) otherwise;
    digits without a folder."""
    import os

    if not root:
        return "digits"
    if os.path.isfile(os.path.join(root, "data_batch_1")) or os.path.isdir(
            os.path.join(root, "cifar-10-batches-py")):
        return "cifar10"
    return "imagenet"


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
