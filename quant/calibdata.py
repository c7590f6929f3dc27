"""Images to calibrate on and images to check the int8 model on.

``--calib`` may be
  * omitted: the built-in digits (train split to calibrate, val split to check),
  * a CIFAR python-batch folder or an ImageNet-style folder (train/ and val/): the train split
    calibrates, the val split checks, with labels,
  * any other folder of images (searched recursively): a seeded random part calibrates, the
    rest checks (no labels, so agreement and SQNR only).
Images are prepared as the model saw them in evaluation: ``transform`` is the checkpoint's
preprocessing (``deploy.preprocess.spec_of_checkpoint``). Subsets are drawn with a fixed seed so that a
class-sorted folder still gives every class.
"""
import dataclasses
import os

import numpy as np

from common.cli import count
from data.sources import DataError


@dataclasses.dataclass
class CalibrationData:
    calib: list          # numpy batches (N, 3, H, W) float32
    check: list          # numpy batches to compare float and int8 on
    labels: object       # int array for the check images, or None
    description: str


def _is_cifar(root):
    return (os.path.isfile(os.path.join(root, "data_batch_1"))
            or os.path.isdir(os.path.join(root, "cifar-10-batches-py")))


def _image_files(root):
    from common.inputs import images_in  # the one folder expansion (predict.py, infer.py too)

    return images_in(root)


class _FileSource:
    def __init__(self, paths):
        self.paths = paths
        self.labels = None

    def __len__(self):
        return len(self.paths)

    def load(self, i):
        from data.images import read_rgb  # the one decoder: 16-bit, CMYK, EXIF, limits

        return read_rgb(self.paths[i])  # UnreadableImage (one line, names the file)


def _pick(n, k, seed):
    return np.sort(np.random.default_rng(seed).permutation(n)[:min(n, k)])


def _batches(source, indices, transform, batch_size):
    out = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        out.append(np.stack([transform(source.load(int(i)), None) for i in chunk])
                   .astype(np.float32))
    return out


def check_folder(root):
    """Fail early (one line) on a calibration folder that is missing or holds no images."""
    if root is None:
        return
    if not os.path.exists(root):
        raise DataError("calibration data not found: %s" % root)
    if not os.path.isdir(root):
        raise DataError("calibration data must be a folder of images: %s" % root)
    if data_kind(root) == "files" and not _image_files(root):
        raise DataError("calibration data %s holds no images" % root)


def data_kind(root, dataset=None):
    """Which loader reads ``root``: "digits" (None), "cifar10"/"cifar100", "imagenet" (train/
    and val/), or "files" (any folder of images). ``dataset`` tells CIFAR-100 from CIFAR-10."""
    if root is None:
        return "digits"
    if _is_cifar(root) or (dataset == "cifar100"
                           and os.path.isdir(os.path.join(root, "cifar-100-python"))):
        return "cifar100" if dataset == "cifar100" else "cifar10"
    if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "val")):
        return "imagenet"
    return "files"


def load_calibration(root, transform, dataset=None, calib_images=512, check_images=1000,
                     batch_size=64, seed=0, image_size=32):
    """``CalibrationData`` for ``root`` (None = built-in digits at ``image_size``), images
    prepared by ``transform`` (PIL image, rng -> CHW float32)."""
    from data.splits import load_splits

    check_folder(root)
    kind = data_kind(root, dataset)
    if kind != "files":
        splits = load_splits(kind, root, image_size, seed=0)
        calib_idx = _pick(len(splits.train), calib_images, seed)
        check_idx = _pick(len(splits.val), check_images, seed + 1)
        return CalibrationData(
            _batches(splits.train, calib_idx, transform, batch_size),
            _batches(splits.val, check_idx, transform, batch_size),
            np.asarray(splits.val.labels)[check_idx],
            "%s: %s to calibrate, %s to check"
            % (root or "built-in digits", count(len(calib_idx), "train image"),
               count(len(check_idx), "val image")))
    files = _image_files(root)
    order = np.random.default_rng(seed).permutation(len(files))
    n_calib = min(calib_images, max(1, len(files) // 2)) if len(files) > 1 else 1
    calib_idx, check_idx = np.sort(order[:n_calib]), np.sort(order[n_calib:][:check_images])
    source = _FileSource(files)
    if not len(check_idx):
        check_idx = calib_idx
    return CalibrationData(
        _batches(source, calib_idx, transform, batch_size),
        _batches(source, check_idx, transform, batch_size), None,
        "%s: %s to calibrate, %s to check (no labels)"
        % (root, count(len(calib_idx), "image"), count(len(check_idx), "other image")))
