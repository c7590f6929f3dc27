"""Default settings per data set.

imagenet  the official RepVGG recipe: 120 epochs, global batch 256, SGD momentum 0.9, lr 0.1
          cosine to 0 after 5 warm-up epochs, weight decay 1e-4, label smoothing 0.1, 224x224.
cifar     the common CIFAR recipe shape with the same optimiser: 200 epochs, batch 128, lr 0.1,
          weight decay 5e-4, 32x32.
digits    the built-in default, sized to finish in minutes on 2 CPU cores: 8 epochs, batch 32,
          lr 0.02 (0.1 made the first epochs unstable at this batch size), 1 warm-up epoch,
          weight decay 1e-4, 32x32.
Any flag given on the command line overrides these.
"""
RECIPES = {
    "imagenet": dict(epochs=120, batch_size=256, lr=0.1, warmup_epochs=5, weight_decay=1e-4,
                     label_smoothing=0.1, image_size=224, workers=8),
    "cifar": dict(epochs=200, batch_size=128, lr=0.1, warmup_epochs=5, weight_decay=5e-4,
                  label_smoothing=0.0, image_size=32, workers=4),
    "digits": dict(epochs=8, batch_size=32, lr=0.02, warmup_epochs=1, weight_decay=1e-4,
                   label_smoothing=0.0, image_size=32, workers=0),
}


def recipe_for(dataset):
    return RECIPES["cifar" if dataset.startswith("cifar") else dataset]


def describe(key):
    """'120 (imagenet), 200 (cifar), 4 (digits)' for --help."""
    return ", ".join("%s (%s)" % (r[key], name) for name, r in RECIPES.items())
