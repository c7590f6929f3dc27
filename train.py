"""train.py — train a RepVGG model on MegEngine; ends with a verified deploy-form model.

    python train.py --arch RepVGG-A0                         # built-in digits, a few minutes on CPU
    python train.py --arch RepVGG-A0 --data /imagenet        # ImageNet folder
    python train.py --arch RepVGG-B1g2 --data /imagenet --recipe table5   # an official recipe
    python train.py --arch RepVGG-A0 --dataset cifar10 --data ./cifar-10-batches-py
    python train.py --arch RepVGG-A0 --resume                # continue the newest run

Without --data it trains on scikit-learn's handwritten digits (shipped inside the package, so
nothing is downloaded), upscaled to 32x32 RGB, with random shifts but no horizontal flips (a
mirrored digit is not the same digit). Defaults marked "per data set" come from the data set's
recipe (imagenet, cifar or digits); --recipe NAME fills every knob as the official RepVGG
configs do, and flags given still override. Writes OUTPUT/latest.pkl (full training state,
every epoch), best.pkl, deploy.pkl, metrics.csv, curves.png (every epoch) and train.log.
"""
import os
import sys
import warnings

# numpy's harmless note about this CPU's float subnormals (printed when scikit-learn loads)
warnings.filterwarnings("ignore", message="The value of the smallest subnormal")

from common import cli, flags  # noqa: E402
from training.config import TrainConfig, add_arguments, arch_stem, check, from_args  # noqa: E402
from training.recipe import recipe_table  # noqa: E402


def build_parser():
    from model import list_models
    epilog = ("named recipes (--recipe; training/recipe.py cites the official sources):\n  "
              + "\n  ".join(recipe_table())
              + "\n\nregistered architectures: " + ", ".join(list_models()))
    p = cli.ArgumentParser(description=__doc__, epilog=epilog)  # one-line argument errors
    return add_arguments(p)


def check_arch(arch):
    """An unknown name or a bad architecture file fails here, before any data is loaded."""
    from model.checkpoint import resolve_arch
    from model.derived import check_arch as check_arch_dict
    from model.registry import check_name
    arch = resolve_arch(arch)  # a searched architecture is recorded by content
    if isinstance(arch, dict):
        check_arch_dict(arch)
    else:
        arch = check_name(arch)  # the registered name (of an alias: repvgg_a0), or
        # UnknownModelError with the known names; nothing is built
    return arch


def parse_config(argv=None):
    """``(TrainConfig, warnings, run name, typed)`` from the command line, validated. The run
    name (``RepVGG-A0``, or an arch.json's stem) names the default run folder; the config
    records a searched architecture by content; ``typed`` is {field: value} of the flags given
    (what a resumed run compares with its recorded settings)."""
    args = build_parser().parse_args(argv)
    config = from_args(args)
    notes = check(config)
    config = config.replace(arch=check_arch(config.arch))
    typed = flags.given(TrainConfig, args)
    if "arch" in typed:
        typed["arch"] = config.arch
    return config, notes, arch_stem(config.arch), typed


def load_data(config):
    """The run's splits and transforms (``data.splits.load_splits``) as ``config`` says."""
    from data.augment import augment_from_name
    from data.sources import Subset
    from data.splits import load_splits

    splits = load_splits(config.dataset, config.data, config.image_size, seed=0,
                         eval_size=config.test_size,
                         augment=augment_from_name(config.aa, image_size=config.image_size),
                         val_split=config.val_split, crop_scale=config.crop_scale,
                         hflip=config.hflip, color_jitter=config.color_jitter)
    if config.max_val_images:
        splits.val = Subset(splits.val, config.max_val_images)
    return splits


def run(config, out, folder=None):
    """One process's training (all of it on CPU or one GPU; one rank when distributed)."""
    import megengine.distributed as dist
    from training.deploy import deploy_best
    from training.logs import setup_logging
    from training.loop import Trainer

    rank = dist.get_rank() if config.processes > 1 else 0
    if config.conv_algo == "profile":
        from megengine.functional.debug_param import set_execution_strategy
        set_execution_strategy("PROFILE")
    log = setup_logging()  # the console until the run has started
    splits = load_data(config)
    trainer = Trainer(config, splits, out, rank=rank, world_size=config.processes)
    trainer.start()  # --resume / --weights: may refuse; nothing is written before this
    if rank == 0:
        setup_logging("%s/train.log" % out)
        if folder is not None:
            folder.started()
        log.info("train.py %s", " ".join(sys.argv[1:]))
    try:
        if config.amp:
            import megengine.amp as amp
            with amp.autocast(enabled=True):
                trainer.fit()
        else:
            trainer.fit()
    except KeyboardInterrupt:
        log.warning("interrupted in epoch %d (step %d); continue with --resume --output %s",
                    trainer.epoch + 1, trainer.step, out)
        raise
    if rank != 0:
        return None
    result = deploy_best(trainer.path("best.pkl"), trainer.path("deploy.pkl"), config.arch,
                         trainer.val_loader, fast_conv=config.fast_conv_grad,
                         progress=config.progress)
    log.info("done: %d optimizer steps; outputs in %s", trainer.step, out)
    print("val top-1: train form %.2f%%, deploy form %.2f%% (top-5 %.2f%% / %.2f%%)"
          % (result["acc1"], result["deploy_acc1"], result["acc5"], result["deploy_acc5"]))
    return result


def main(argv=None):
    config, notes, name, typed = parse_config(argv)
    for note in notes:
        print("warning: %s" % note, file=sys.stderr)
    from training.runs import RunFolder
    from data.splits import data_name
    with RunFolder(config.output, name, data_name(config.dataset, config.data),
                   config.resume) as folder:
        if config.resume:  # the run's own settings, and the flags typed now where allowed
            from training.state import resumed_config
            config = resumed_config(os.path.join(folder.path, "latest.pkl"), typed,
                                    folder.path)
        if config.processes > 1:
            from training.distributed import check_gpus, launch
            check_gpus(config.ngpus, config.world_size)
            folder.started()
            launch(run, config.ngpus, config.world_size, config.rank, config.dist_addr,
                   config.dist_port, config, folder.path)
            return 0
        from common.device import use_device
        device = use_device(config.device)
        if config.amp and not device.startswith("gpu"):
            raise cli.UserError("--amp needs a GPU (mixed precision is off on CPU)")
        run(config, folder.path, folder)
    return 0


if __name__ == "__main__":
    cli.run(main)
