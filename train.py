"""train.py — train a RepVGG model on MegEngine; ends with a verified deploy-form model.

    python train.py --arch RepVGG-A0                         # built-in digits, a few minutes on CPU
    python train.py --arch RepVGG-A0 --data /imagenet        # ImageNet folder, official recipe
    python train.py --arch RepVGG-A0 --dataset cifar10 --data ./cifar-10-batches-py
    python train.py --arch RepVGG-A0 --resume                # continue OUTPUT/latest.pkl

Without --data it trains on scikit-learn's handwritten digits (shipped inside the package, so
nothing is downloaded), upscaled to 32x32 RGB, with random shifts but no horizontal flips (a
mirrored digit is not the same digit). Defaults marked "per data set" come from the recipe for
the data set in use: imagenet = the official RepVGG recipe, cifar, or digits. Writes
OUTPUT/latest.pkl (full training state, every epoch), best.pkl, deploy.pkl, metrics.csv,
curves.png and train.log.
"""
import argparse
import os
import sys
import warnings

# numpy's harmless note about this CPU's float subnormals (printed when scikit-learn loads)
warnings.filterwarnings("ignore", message="The value of the smallest subnormal")

from common import cli
from common.device import use_device
from training.recipe import describe, recipe_for

PER_DATASET = ("epochs", "batch_size", "lr", "warmup_epochs", "weight_decay",
               "label_smoothing", "image_size", "workers")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # per-data-set defaults are spelled out in the help
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv):
    from model import list_models
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--arch", default="RepVGG-A0",
      help="registered model name or a derived architecture .json; known: "
           + ", ".join(list_models()))
    a("--data", metavar="DIR", help="data folder: ImageNet-style (train/ and val/ with one "
      "sub-folder per class) or CIFAR python batches; none = built-in digits")
    a("--dataset", choices=("digits", "imagenet", "cifar10", "cifar100"),
      help="data format; default: digits without --data, cifar10 when DIR holds CIFAR-10 "
           "batches, imagenet otherwise")
    a("--output", metavar="DIR", help="run folder; default: runs/<arch>-<dataset> (a new "
      "-2, -3 ... if that holds a run; with --resume the newest one)")
    a("--epochs", type=int, help="epochs; per data set: " + describe("epochs"))
    a("--batch-size", type=int, help="images per step per process; per data set: "
      + describe("batch_size"))
    a("--lr", type=float, help="peak learning rate (cosine decay to 0 per step); per data set: "
      + describe("lr"))
    a("--warmup-epochs", type=float, help="linear warm-up length in epochs; per data set: "
      + describe("warmup_epochs"))
    a("--weight-decay", type=float, help="L2 weight decay (not on biases and BN, as in the "
      "official train.py); per data set: " + describe("weight_decay"))
    a("--label-smoothing", type=float, help="label smoothing; per data set: "
      + describe("label_smoothing"))
    a("--image-size", type=int, help="training/eval resolution; per data set: "
      + describe("image_size"))
    a("--workers", type=int, help="data loader worker processes (0 = in the main process); "
      "per data set: " + describe("workers"))
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--custwd", action="store_true", help="the official custom L2: no plain decay on "
      "rbr_dense/rbr_1x1, add 0.5*wd*custom_l2 (decay of the equivalent fused kernel) to the loss")
    a("--bias-lr-mult", type=float, default=2.0,
      help="learning-rate multiplier for biases (the official train.py uses 2)")
    a("--eval-batch-size", type=int, default=100, help="images per evaluation batch")
    a("--seed", type=int, default=0, help="seed for initialisation, data order, augmentation")
    a("--device", default="auto", help="auto (GPU if usable, else all CPU cores), cpu, cpuN, "
      "gpu")
    a("--max-steps-per-epoch", type=int, default=0,
      help="cap on optimizer steps per epoch (0 = the whole train split; for quick tests)")
    a("--max-val-images", type=int, default=0,
      help="evaluate on the first N validation images only (0 = all; for quick tests)")
    a("--resume", action="store_true", help="continue the run in --output from latest.pkl")
    a("--weights", metavar="CKPT", help="initialise from a model checkpoint (fine-tuning; "
      "the classifier must match the number of classes)")
    a("--amp", action="store_true", help="mixed precision (GPU only; off on CPU)")
    a("--no-fast-conv-grad", dest="fast_conv_grad", action="store_false",
      help="use MegEngine's own conv weight-gradient kernel (slower on CPU; see "
           "training/fastconv.py)")
    a("--conv-algo", choices=("profile", "heuristic"), default="heuristic",
      help="MegEngine conv algorithm choice: profile (times every candidate once per shape: "
           "minutes of start-up on CPU) or heuristic")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g = p.add_argument_group("data-parallel training (GPUs)")
    g.add_argument("--ngpus", type=int, default=1, help="GPUs (processes) on this machine")
    g.add_argument("--world-size", type=int, default=1, help="number of machines")
    g.add_argument("--rank", type=int, default=0, help="this machine's index (0 = master)")
    g.add_argument("--dist-addr", default="localhost", help="master machine's address")
    g.add_argument("--dist-port", type=int, default=23456, help="master machine's port")
    return p.parse_args(argv)


def default_output(cfg):
    """runs/<arch>-<dataset>, or -2, -3 ... when taken; with --resume the newest existing."""
    name = os.path.splitext(os.path.basename(cfg["arch"]))[0]
    base = os.path.join("runs", "%s-%s" % (name, cfg["dataset"]))
    candidates = [base] + ["%s-%d" % (base, i) for i in range(2, 1000)]
    taken = [c for c in candidates if os.path.exists(os.path.join(c, "latest.pkl"))]
    if cfg["resume"]:
        return taken[-1] if taken else base
    return next(c for c in candidates if c not in taken)


def resolve(args):
    """The run's settings as a plain dict, per-data-set defaults filled in."""
    from data.sources import DataError
    cfg = vars(args).copy()
    if cfg["dataset"] is None:
        if not args.data:
            cfg["dataset"] = "digits"
        elif os.path.isfile(os.path.join(args.data, "data_batch_1")) or os.path.isdir(
                os.path.join(args.data, "cifar-10-batches-py")):
            cfg["dataset"] = "cifar10"
        else:
            cfg["dataset"] = "imagenet"
    if cfg["dataset"] == "digits" and args.data:
        raise DataError("--dataset digits is built in; it takes no --data")
    recipe = recipe_for(cfg["dataset"])
    for key in PER_DATASET:
        if cfg[key] is None:
            cfg[key] = recipe[key]
    for key in ("epochs", "batch_size", "eval_batch_size", "image_size"):
        if cfg[key] < 1:
            raise cli.UserError("--%s must be at least 1" % key.replace("_", "-"))
    if min(cfg["workers"], cfg["max_steps_per_epoch"], cfg["max_val_images"]) < 0:
        raise cli.UserError("--workers, --max-steps-per-epoch and --max-val-images cannot be "
                            "negative")
    if cfg["image_size"] < 16:
        raise cli.UserError("--image-size must be at least 16")
    if cfg["output"] is None:
        cfg["output"] = default_output(cfg)
    cfg["world_size"] = args.ngpus * args.world_size
    # a searched architecture is recorded by content, so its checkpoints load from anywhere
    from model.checkpoint import resolve_arch
    cfg["arch"] = resolve_arch(cfg["arch"])
    return cfg


def run(cfg):
    """One process's training (all of it on CPU or one GPU; one rank when distributed)."""
    import megengine.distributed as dist
    from data.splits import load_splits
    from training.loop import Trainer
    from training.metrics import setup_logging

    rank = dist.get_rank() if cfg["world_size"] > 1 else 0
    if cfg["conv_algo"] == "profile":
        from megengine.functional.debug_param import set_execution_strategy
        set_execution_strategy("PROFILE")
    if rank == 0:
        os.makedirs(cfg["output"], exist_ok=True)
        log = setup_logging(os.path.join(cfg["output"], "train.log"))
    splits = load_splits(cfg["dataset"], cfg["data"], cfg["image_size"], seed=0)
    if cfg["max_val_images"]:
        from data.sources import Subset
        splits.val = Subset(splits.val, cfg["max_val_images"])
    trainer = Trainer(cfg, splits, rank=rank, world_size=cfg["world_size"])
    if cfg["resume"]:
        trainer.resume()
    elif cfg["weights"]:
        from common.checkpoint import load_checkpoint
        from model.checkpoint import load_weights, state_dict_of
        load_weights(trainer.model, state_dict_of(load_checkpoint(cfg["weights"])),
                     cfg["weights"])
    if cfg["amp"]:
        import megengine.amp as amp
        with amp.autocast(enabled=True):
            trainer.fit()
    else:
        trainer.fit()
    if rank != 0:
        return None
    result = trainer.finish()
    log.info("done: %d optimizer steps; outputs in %s", trainer.step, cfg["output"])
    print("val top-1: train form %.2f%%, deploy form %.2f%% (top-5 %.2f%% / %.2f%%)"
          % (result["acc1"], result["deploy_acc1"], result["acc5"], result["deploy_acc5"]))
    return result


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    if not cfg["resume"] and os.path.exists(os.path.join(cfg["output"], "latest.pkl")):
        raise cli.UserError("%s already holds a run; pass --resume to continue it or choose "
                            "another --output" % cfg["output"])
    from model.checkpoint import build_model
    if cfg["world_size"] > 1:
        from training.distributed import check_gpus, launch, world
        world(args.ngpus, args.world_size, args.rank)
        check_gpus(args.ngpus)
        launch(run, args.ngpus, args.world_size, args.rank, args.dist_addr, args.dist_port, cfg)
        return 0
    device = use_device(cfg["device"])
    if cfg["amp"] and not device.startswith("gpu"):
        raise cli.UserError("--amp needs a GPU (mixed precision is off on CPU)")
    build_model(cfg["arch"], 10)  # an unknown --arch fails here, before loading data
    run(cfg)
    return 0


if __name__ == "__main__":
    cli.run(main)
