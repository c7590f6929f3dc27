"""The settings of one training run as one typed, frozen record: ``TrainConfig``.

Every field declares its own command-line flag and help text (``common.flags``, the mechanism
search.py's settings use too: ``add_arguments`` generates the argparse flags from the fields)
and whether it is part of the optimisation a resumed run must keep (``resume_check``: compared
with the values saved in ``latest.pkl``). A default of None comes from the data set's recipe.

Values are resolved as: the field's default < the data set's defaults < ``--recipe NAME`` <
the flags given on the command line (``from_args``).
"""
import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Optional

from common import cli, flags
from errors import UserError

from .recipe import RECIPES, dataset_defaults, describe

DATASETS = ("digits", "imagenet", "cifar10", "cifar100")


class ConfigError(UserError):
    """A setting out of its range, or settings that contradict each other."""


DIST = "data-parallel training (GPUs)"  # the flags' group in --help


def knob(default, help, *, resume_check=False, **flag):
    """A ``TrainConfig`` field: its flag (``common.flags.setting``: type, choices, metavar,
    ``negate`` for a True-by-default switch exposed as ``--no-<name>``, group) and whether a
    resumed run must keep it."""
    return flags.setting(default, help, resume_check=resume_check, **flag)


def _per_dataset(key, text):
    return "%s; per data set: %s" % (text, describe(key))


@dataclass(frozen=True)
class TrainConfig:
    # what to train, on what, where
    arch: object = knob("RepVGG-A0", "registered model name or a searched architecture .json "
                        "(recorded by content); the registered names are listed below",
                        resume_check=True,
                        type=str)
    data: Optional[str] = knob(None, "data folder: ImageNet-style (train/ and val/ with one "
                               "sub-folder per class) or CIFAR python batches; none = built-in "
                               "digits", metavar="DIR")
    dataset: Optional[str] = knob(None, "data format; default: digits without --data, cifar10 "
                                  "when DIR holds CIFAR-10 batches (data_batch_1 or "
                                  "cifar-10-batches-py/), cifar100 when it holds CIFAR-100's "
                                  "(train + meta or cifar-100-python/), imagenet otherwise",
                                  choices=DATASETS, resume_check=True)
    output: Optional[str] = knob(None, "run folder; default: runs/<arch>-<data> (digits, "
                                 "cifar10, an image folder's name; a new -2, "
                                 "-3 ... if that holds or is running a run; with --resume the "
                                 "one whose latest.pkl is newest)", metavar="DIR")
    recipe: Optional[str] = knob(None, "named official recipe filling the recipe knobs (the "
                                 "table at the end); flags given still override",
                                 choices=tuple(RECIPES), resume_check=True)
    # the recipe's knobs
    epochs: int = knob(None, _per_dataset("epochs", "epochs"), resume_check=True)
    batch_size: int = knob(None, _per_dataset("batch_size", "images per step per process"),
                           resume_check=True)
    lr: float = knob(None, _per_dataset("lr", "peak learning rate (cosine decay to 0 per "
                                        "step), as given: not scaled with the batch"),
                     resume_check=True)
    lr_per_256: Optional[float] = knob(None, "instead of --lr: the peak learning rate per 256 "
                                       "images (timm's --lr-base), scaled to the global batch: "
                                       "lr = LR_PER_256 x batch x processes / 256 (printed)",
                                       resume_check=True)
    warmup_epochs: float = knob(None, _per_dataset("warmup_epochs", "linear warm-up length in "
                                                   "epochs"), resume_check=True)
    weight_decay: float = knob(None, _per_dataset("weight_decay", "L2 weight decay (not on "
                               "biases and BN, as in the official train.py)"),
                               resume_check=True)
    label_smoothing: float = knob(None, _per_dataset("label_smoothing", "label smoothing in "
                                  "[0, 1)"), resume_check=True)
    image_size: int = knob(None, _per_dataset("image_size", "training resolution"),
                           resume_check=True)
    eval_image_size: int = knob(0, "evaluation resolution (0 = --image-size); recorded in "
                                "best.pkl/deploy.pkl as the model's input size",
                                resume_check=True)
    workers: Optional[int] = knob(None, "data loader worker processes (0 = in the main "
                                  "process); default: from the data and the CPUs this process "
                                  "may use (data.loader.default_workers, docs/training.md)")
    aa: str = knob("none", "AutoAugment / RandAugment policy on training images: none, autoaug "
                   "(the paper's ImageNet policy), rand-m9-mstd0.5-style RandAugment, raugN "
                   "(the official repository's RandAugment, magnitude N)", resume_check=True)
    crop_scale: tuple = knob((0.08, 1.0), "random-resized-crop area range of image folders "
                             "(timm's --scale)", resume_check=True, type=float, nargs=2,
                             metavar=("MIN", "MAX"))
    hflip: float = knob(None, _per_dataset("hflip", "horizontal flip probability"),
                        resume_check=True)
    color_jitter: float = knob(0.0, "colour jitter strength S: brightness, contrast and "
                               "saturation factors in [1-S, 1+S] (timm's --color-jitter; "
                               "0 = off)", resume_check=True)
    val_split: float = knob(0.0, "hold out this fraction of the train split (stratified, the "
                            "same images in every run) as the validation split instead of "
                            "val/ (0 = use val/)", resume_check=True, metavar="FRACTION")
    mixup: float = knob(0.0, "mixup alpha (0 = off); targets become soft, label smoothing is "
                        "applied inside them", resume_check=True)
    cutmix: float = knob(0.0, "CutMix alpha (0 = off)", resume_check=True)
    mixup_prob: float = knob(1.0, "probability of mixing a batch when mixup or CutMix is on",
                             resume_check=True)
    mixup_switch_prob: float = knob(0.5, "probability of CutMix instead of mixup when both are "
                                    "on", resume_check=True)
    ema_alpha: float = knob(0.0, "EMA of the weights and BN statistics with the official "
                            "TRAIN.EMA_ALPHA semantics (0 = off; e.g. 1e-5): evaluated every "
                            "epoch beside the raw model; best.pkl/deploy.pkl take the better",
                            resume_check=True)
    ema_update_period: int = knob(8, "update the EMA every N optimizer steps (the official "
                                  "TRAIN.EMA_UPDATE_PERIOD)", resume_check=True)
    momentum: float = knob(0.9, "SGD momentum, in [0, 1)", resume_check=True)
    custwd: bool = knob(False, "the official custom L2: no plain decay on rbr_dense/rbr_1x1, add "
                        "0.5*wd*custom_l2 (decay of the equivalent fused kernel) to the loss",
                        resume_check=True)
    bias_lr_mult: float = knob(2.0, "learning-rate multiplier for biases (the official train.py "
                               "uses 2)", resume_check=True)
    seed: int = knob(0, "seed for initialisation, data order, augmentation, mixup",
                     resume_check=True)
    max_steps_per_epoch: int = knob(0, "cap on optimizer steps per epoch (0 = the whole train "
                                    "split; for quick tests)", resume_check=True)
    # running it
    eval_batch_size: int = knob(100, "images per evaluation batch")
    max_val_images: int = knob(0, "evaluate on the first N validation images only (0 = all; "
                               "for quick tests)")
    device: str = knob("auto", "auto (GPU if usable, else all CPU cores), cpu, cpuN, gpu")
    resume: bool = knob(False, "continue the run in --output (default: the newest "
                        "runs/<arch>-<data>*) from its latest.pkl, with the settings it "
                        "records: a recipe flag given must equal them; --workers, --device, "
                        "--no-progress ... may change")
    weights: Optional[str] = knob(None, "initialise from a train-form model checkpoint "
                                  "(best.pkl, latest.pkl, an imported .pkl) to fine-tune",
                                  metavar="CKPT")
    reset_classifier: bool = knob(False, "with --weights: keep the new model's classifier when "
                                  "the checkpoint's has another number of classes (e.g. 1000 "
                                  "ImageNet classes fine-tuned on 10)")
    frozen_stages: int = knob(0, "fine-tuning: stages 0..K-1 keep their BatchNorms in eval mode "
                              "and are not trained (model.finetune; 0 = none, at most 5)",
                              resume_check=True, metavar="K", type=cli.integer(0, 5))
    norm_eval: bool = knob(False, "fine-tuning: every BatchNorm keeps its running statistics "
                           "(eval mode) while training", resume_check=True)
    amp: bool = knob(False, "mixed precision; needs a GPU (an error on CPU)")
    fast_conv_grad: bool = knob(True, "use MegEngine's own conv weight-gradient kernel instead "
                                "of the faster matrix-product route (see training/fastconv.py)",
                                negate=True)
    conv_algo: str = knob("heuristic", "MegEngine conv algorithm choice: profile (times every "
                          "candidate once per shape: minutes of start-up on CPU) or heuristic",
                          choices=("profile", "heuristic"))
    progress: bool = knob(True, "hide the progress bars (the log lines stay)", negate=True)
    # data-parallel training
    ngpus: int = knob(1, "GPUs (processes) on this machine", group=DIST)
    world_size: int = knob(1, "number of machines", group=DIST)
    rank: int = knob(0, "this machine's index, 0 .. --world-size - 1 (0 = master)",
                     group=DIST)
    dist_addr: str = knob("localhost", "master machine's address", group=DIST)
    dist_port: int = knob(23456, "master machine's port", group=DIST)

    # -- derived ---------------------------------------------------------------------------
    @property
    def processes(self):
        """Training processes in the whole run (GPUs on every machine)."""
        return self.ngpus * self.world_size

    @property
    def test_size(self):
        return self.eval_image_size or self.image_size

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def as_dict(self):
        return dataclasses.asdict(self)


def resume_fields():
    """Names of the fields a resumed run must keep."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata["resume_check"])


def add_arguments(parser):
    """Add one flag per ``TrainConfig`` field; each stays None unless typed (``from_args``
    fills in the rest)."""
    return flags.add_flags(parser, TrainConfig)


def detect_dataset_name(given, data):
    """The data set: as given, else found by looking at ``data`` (``data.splits``)."""
    from data.splits import detect_dataset
    return given or detect_dataset(data)


def from_args(args):
    """``TrainConfig`` from an argparse namespace made by ``add_arguments``: field defaults,
    then the data set's defaults, then ``--recipe``, then the given flags."""
    given = flags.given(TrainConfig, args)
    dataset = detect_dataset_name(given.get("dataset"), given.get("data"))
    values = dict(dataset_defaults(dataset))
    if given.get("recipe"):
        values.update(RECIPES[given["recipe"]])
    if "image_size" not in given and str(given.get("arch", "")).endswith(".json"):
        from model.derived import arch_image_size  # a searched network: the size it was found at
        values["image_size"] = arch_image_size(given["arch"], values.get("image_size"))
    values.update(given)
    values["dataset"] = dataset
    config = TrainConfig(**values)
    if config.lr_per_256 is not None:  # timm's rule: linear in the global batch
        if "lr" in given:
            raise ConfigError("give --lr (absolute) or --lr-per-256 (scaled to the batch), "
                              "not both")
        config = config.replace(lr=scaled_lr(config.lr_per_256, config))
    return config


def scaled_lr(per_256, config):
    """``--lr-per-256``'s learning rate for this run's global batch."""
    return per_256 * config.batch_size * config.processes / 256.0


def check(config):
    """Raise ``ConfigError`` (one line) for a setting out of range; return warnings (lines)."""
    c = config

    def need(ok, message):
        if not ok:
            raise ConfigError(message)

    for name in ("epochs", "batch_size", "eval_batch_size", "ema_update_period"):
        need(getattr(c, name) >= 1, "--%s must be at least 1 (got %s)"
             % (name.replace("_", "-"), getattr(c, name)))
    need(c.workers is None or c.workers >= 0, "--workers cannot be negative (got %s)"
         % c.workers)
    for name in ("max_steps_per_epoch", "max_val_images", "warmup_epochs",
                 "weight_decay", "bias_lr_mult", "mixup", "cutmix"):
        need(getattr(c, name) >= 0, "--%s cannot be negative (got %s)"
             % (name.replace("_", "-"), getattr(c, name)))
    need(c.image_size >= 16, "--image-size must be at least 16 (got %d)" % c.image_size)
    need(c.eval_image_size == 0 or c.eval_image_size >= 16,
         "--eval-image-size must be 0 (= --image-size) or at least 16 (got %d)"
         % c.eval_image_size)
    need(c.lr > 0, "--lr must be positive (got %g)" % c.lr)
    need(c.lr_per_256 is None or c.lr_per_256 > 0, "--lr-per-256 must be positive (got %s)"
         % c.lr_per_256)
    need(0 < c.crop_scale[0] <= c.crop_scale[1] <= 1, "--crop-scale MIN MAX needs 0 < MIN <= "
         "MAX <= 1 (got %g %g)" % tuple(c.crop_scale))
    need(0 <= c.hflip <= 1, "--hflip must be a probability in [0, 1] (got %g)" % c.hflip)
    need(c.color_jitter >= 0, "--color-jitter cannot be negative (got %g)" % c.color_jitter)
    need(c.dataset == "imagenet" or tuple(c.crop_scale) == (0.08, 1.0), "--crop-scale applies "
         "to image folders (their random resized crop); digits and CIFAR are shifted instead")
    need(0 <= c.val_split < 1, "--val-split must be a fraction in [0, 1) (got %g)"
         % c.val_split)
    need(0 <= c.momentum < 1, "--momentum must be in [0, 1) (got %g)" % c.momentum)
    need(0 <= c.label_smoothing < 1, "--label-smoothing must be in [0, 1) (got %g)"
         % c.label_smoothing)
    for name in ("mixup_prob", "mixup_switch_prob", "ema_alpha"):
        need(0 <= getattr(c, name) <= 1, "--%s must be in [0, 1] (got %g)"
             % (name.replace("_", "-"), getattr(c, name)))
    need(c.ngpus >= 1, "--ngpus must be at least 1 (got %d)" % c.ngpus)
    need(c.world_size >= 1, "--world-size (number of machines) must be at least 1 (got %d)"
         % c.world_size)
    need(0 <= c.rank < c.world_size, "--rank must be in 0..%d for --world-size %d (got %d)"
         % (c.world_size - 1, c.world_size, c.rank))
    need(1 <= c.dist_port <= 65535, "--dist-port must be in 1..65535 (got %d)" % c.dist_port)
    need(not (c.dataset == "digits" and c.data),
         "--dataset digits is built in; it takes no --data")
    need(not (c.resume and c.weights), "--resume continues a run with its own weights; drop "
         "--weights (or start a new run with --weights)")
    need(not c.reset_classifier or c.weights, "--reset-classifier applies to --weights CKPT")
    if c.aa and c.aa != "none":
        from data.augment import augment_from_name
        augment_from_name(c.aa)  # an unknown policy name fails here, with the known ones
    warnings = []
    if c.warmup_epochs >= c.epochs:
        warnings.append("--warmup-epochs %g >= --epochs %d: the whole run is warm-up (the "
                        "learning rate never decays)" % (c.warmup_epochs, c.epochs))
    return warnings


def arch_stem(arch):
    """A short name for run folders: the registered name or the .json file's stem."""
    if isinstance(arch, dict):
        return "searched"
    return os.path.splitext(os.path.basename(str(arch)))[0]
