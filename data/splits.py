"""The train and validation splits a run uses, chosen by ``--dataset`` / ``--data``.

digits    scikit-learn's built-in handwritten digits (no download), upscaled to image_size;
          shift augmentation, no flips (a mirrored digit is a different or no digit).
cifar10/100  the CIFAR python-pickle files in a local folder; shift + flip, like the usual
          CIFAR recipe.
imagenet  an ImageNet-style folder with train/ and val/ (any such folder: its messages, run
          names and titles call it by its folder name, ``data_name``); the official recipe's
          random resized crop + flip, and resize + centre crop for evaluation.

``val_split=F`` holds out the fraction F of the train split as the validation split instead of
the data set's own (val/ need not exist): stratified (F of every class), by a generator of the
fixed ``SPLIT_SEED``, so every run and ``tools/eval.py`` (which reads the fraction from the
checkpoint) hold out the same images whatever ``--seed`` is. Evaluation alone
(``train=False``) reads only the split it scores.
"""
import os
from dataclasses import dataclass

from . import transforms as T
from .cifar import LAYOUT as CIFAR_LAYOUT
from .sources import ArraySource, DataError, Indexed, stratified_split

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")
SPLIT_SEED = 0  # the held-out split is a property of the data, not of a run's --seed


@dataclass
class Splits:
    train: object      # a source (see data/sources.py)
    val: object
    classes: tuple
    train_transform: object
    eval_transform: object
    name: str = ""     # what messages and titles call the data (``data_name``)


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


def data_name(dataset, root=None):
    """What to call the data in run names, titles and messages: an image folder by its own
    name (``/data/flowers/`` -> ``flowers``; ``folder`` if it has none), else the data set."""
    if dataset == "imagenet" and root:
        return os.path.basename(os.path.normpath(os.path.abspath(root))) or "folder"
    return dataset


def eval_transform(dataset, image_size):
    return T.imagenet_eval(image_size) if dataset == "imagenet" else T.small_eval(image_size)


def _sources(dataset, root, image_size, seed, train, val_split, classes):
    """``(train source or None, val source or None, classes)`` as stored: what ``train`` and
    ``val_split`` need, nothing more."""
    if dataset == "digits":
        from .digits import load_digits
        tr, va, names = load_digits(image_size=image_size, seed=seed)
        return (ArraySource(tr.images, tr.labels, names, "digits train split"),
                ArraySource(va.images, va.labels, names, "digits val split"), names)
    if dataset in ("cifar10", "cifar100"):
        if not root:
            raise DataError("--dataset %s needs --data DIR (the folder with CIFAR's python "
                            "batch files)" % dataset)
        from .cifar import load_cifar
        tr, va = load_cifar(root, dataset)
        return tr, va, tr.classes
    if dataset == "imagenet":
        if not root:
            raise DataError("--dataset imagenet needs --data DIR (an image folder with "
                            "train/%s)" % ("" if val_split else " and val/"))
        from .imagefolder import load_image_folder
        tr, va = load_image_folder(root, train=train or bool(val_split), val=not val_split,
                                   classes=classes)
        return tr, va, (tr or va).classes
    raise DataError("unknown dataset %r; known: %s" % (dataset, ", ".join(DATASETS)))


def load_splits(dataset, root, image_size, seed=0, eval_size=None, augment=None, val_split=0.0,
                train=True, classes=None, crop_scale=None, hflip=None, color_jitter=0.0):
    """The splits and their transforms; ``eval_size`` (default ``image_size``) for evaluation,
    ``augment`` an extra training-image policy ``t(image, rng)`` (``data.augment``),
    ``val_split`` the held-out fraction of the train split (module docstring), ``train=False``
    for evaluation only (``Splits.train`` is None; ``classes``, the model's, label the
    images), ``crop_scale``/``hflip``/``color_jitter`` the training augmentation
    (``data.transforms``; None: the data set's)."""
    tr, va, names = _sources(dataset, root, image_size, seed, train, val_split, classes)
    if val_split:
        kept, held = stratified_split(tr.labels, val_split, SPLIT_SEED)
        va = Indexed(tr, held, "%s (%g held out)" % (tr.name, val_split))
        tr = Indexed(tr, kept, tr.name)
    if not train:
        tr = None
    if dataset == "digits":  # no flips by default: a mirrored digit is another or no digit
        train_tf = T.small_train(image_size, flip=hflip or 0.0, augment=augment,
                                 color_jitter=color_jitter)
    elif dataset in ("cifar10", "cifar100"):
        train_tf = T.small_train(image_size, flip=0.5 if hflip is None else hflip,
                                 augment=augment, color_jitter=color_jitter)
    else:
        train_tf = T.imagenet_train(image_size, augment=augment, scale=crop_scale,
                                    flip=0.5 if hflip is None else hflip,
                                    color_jitter=color_jitter)
    return Splits(tr, va, tuple(names), train_tf, eval_transform(dataset, eval_size or image_size),
                  data_name(dataset, root))


def eval_splits(checkpoint, dataset, root, image_size):
    """The validation split to score a model checkpoint on (``tools/eval.py``), reading only
    that split: ``root`` (``--data``) or else the data folder train.py recorded, its val/ or
    the part of its train/ the run held out (``val_split``, recorded), labelled with the
    classes the checkpoint records. ``dataset`` and ``image_size`` as ``checkpoint_data``
    chose them."""
    recorded = checkpoint if isinstance(checkpoint, dict) else {}
    folder = recorded.get("data")
    if not root and folder and dataset != "digits":
        if not os.path.exists(folder):
            raise DataError("the data folder recorded in the checkpoint, %s, is gone; pass "
                            "--data DIR" % folder)
        root = folder
    same = bool(folder) and os.path.abspath(root or "") == os.path.abspath(folder)
    classes = recorded.get("classes")
    val_split = recorded.get("val_split", 0.0) if same else 0.0
    if classes:
        from .imagefolder import UnknownClasses
        try:
            return load_splits(dataset, root, image_size, val_split=val_split, train=False,
                               classes=tuple(map(str, classes)))
        except UnknownClasses:  # other classes: tools/eval.py names the differences
            pass
    return load_splits(dataset, root, image_size, val_split=val_split, train=False)


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
