"""Recipes: default settings per data set, and the official ImageNet recipes by name.

Precedence: the data set's defaults, then ``--recipe NAME``, then any flag given on the command
line.

Data set defaults (used without ``--recipe``):

imagenet  120 epochs, global batch 256, SGD momentum 0.9, lr 0.1 cosine to 0 after 5 warm-up
          epochs, weight decay 1e-4, label smoothing 0.1, 224x224.
cifar     the common CIFAR recipe shape with the same optimiser: 200 epochs, batch 128, lr 0.1,
          weight decay 5e-4, 32x32.
digits    the built-in default, sized to finish in minutes on 2 CPU cores: 12 epochs, batch 32,
          lr 0.02 (0.1 made the first epochs unstable at this batch size), 1 warm-up epoch,
          weight decay 1e-4, 32x32.

Named recipes (the official repository, github.com/DingXiaoH/RepVGG; files cited at the
commit of its current master). The official batch of 256 is global (8 GPUs x 32); here
``--batch-size`` is per process, so with ``--ngpus 8`` pass ``--batch-size 32``:

table4  the paper's Table 4 (120-epoch) recipe of the original ``train.py`` (git 9a1de4a
        train.py:31-46 epochs 120, batch 256, lr 0.1, wd 1e-4; :195 CosineAnnealingLR over all
        steps, no warm-up; README.md:129 "cosine learning rate decay from 0.1 to 0", random
        resized crop + flip only; no label smoothing: the author in DingXiaoH/RepVGG#17, "We did
        not use it for the 120-epoch training").
table5  the paper's Table 5 recipe, "200 epochs with Autoaugment, label smoothing and mixup"
        (quoted in DingXiaoH/RepVGG#106; no script was released): lr 0.1, wd 1e-4, 5 warm-up
        epochs and label smoothing 0.1 as the repository's reproduction command
        (README.md:127), AutoAugment's ImageNet policy, mixup alpha 0.2 (train/config.py:109,
        ``AUG.MIXUP = 0.2``), no CutMix (:111).
d2se    RepVGG-D2se (README.md:146: trained at 224, tested at 320, global batch 256): the
        reproduction command's 300 epochs, lr 0.1, wd 1e-4, 5 warm-up epochs, label
        smoothing 0.1 (README.md:127) with the Table 5 augmentation (AutoAugment, mixup 0.2);
        the README gives no other knob for it.
l2pse   RepVGGplus-L2pse (README.md:118-120): 300 epochs, lr 0.1, wd 4e-5, 5 warm-up epochs,
        label smoothing 0.1, ``AUG.PRESET raug15`` (the repository's RandAugment, magnitude 15),
        mixup 0.2, train at 256, test at 320.

EMA: the official ``TRAIN.EMA_ALPHA`` defaults to 0.0 (train/config.py:98, off) and no released
command sets it, so no recipe turns it on; ``--ema-alpha`` does (``TRAIN.EMA_UPDATE_PERIOD`` 8,
config.py:99). Random erasing (``AUG.REPROB``) belongs to timm's ``create_transform`` path,
which none of the commands above uses (their presets replace it, data/build.py:139-156).
"""

DATASET_DEFAULTS = {
    "imagenet": dict(epochs=120, batch_size=256, lr=0.1, warmup_epochs=5, weight_decay=1e-4,
                     label_smoothing=0.1, image_size=224, hflip=0.5),
    "cifar": dict(epochs=200, batch_size=128, lr=0.1, warmup_epochs=5, weight_decay=5e-4,
                  label_smoothing=0.0, image_size=32, hflip=0.5),
    "digits": dict(epochs=12, batch_size=32, lr=0.02, warmup_epochs=1, weight_decay=1e-4,
                   label_smoothing=0.0, image_size=32, hflip=0.0),
}

_IMAGENET = dict(batch_size=256, lr=0.1, image_size=224, eval_image_size=0, cutmix=0.0,
                 ema_alpha=0.0)
RECIPES = {
    "table4": dict(_IMAGENET, epochs=120, warmup_epochs=0, weight_decay=1e-4,
                   label_smoothing=0.0, aa="none", mixup=0.0),
    "table5": dict(_IMAGENET, epochs=200, warmup_epochs=5, weight_decay=1e-4,
                   label_smoothing=0.1, aa="autoaug", mixup=0.2),
    "d2se": dict(_IMAGENET, epochs=300, warmup_epochs=5, weight_decay=1e-4,
                 label_smoothing=0.1, aa="autoaug", mixup=0.2, eval_image_size=320),
    "l2pse": dict(_IMAGENET, epochs=300, warmup_epochs=5, weight_decay=4e-5,
                  label_smoothing=0.1, aa="raug15", mixup=0.2, image_size=256,
                  eval_image_size=320),
}

# The columns --help and the README show for the named recipes.
TABLE_COLUMNS = ("epochs", "batch_size", "lr", "warmup_epochs", "weight_decay",
                 "label_smoothing", "aa", "mixup", "ema_alpha", "image_size", "eval_image_size")


def dataset_defaults(dataset):
    return DATASET_DEFAULTS["cifar" if dataset.startswith("cifar") else dataset]


def describe(key):
    """'120 (imagenet), 200 (cifar), 8 (digits)' for --help."""
    return ", ".join("%s (%s)" % (r[key], name) for name, r in DATASET_DEFAULTS.items())


def recipe_table():
    """The named recipes as aligned text lines (for --help and the README)."""
    rows = [("recipe",) + TABLE_COLUMNS]
    for name, values in RECIPES.items():
        rows.append((name,) + tuple(str(values.get(k, "")) for k in TABLE_COLUMNS))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
