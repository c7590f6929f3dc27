"""Records of a run: the log file, per-epoch metrics as CSV, and a PNG of the curves."""
import csv
import logging
import os

from common.atomic import atomic_write

FIELDS = ("epoch", "step", "lr", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5",
          "train_images_per_s", "epoch_seconds", "skipped_images")

log = logging.getLogger("train")


def setup_logging(path):
    """Log to ``path`` (appending, so a resumed run keeps its history) and to stderr."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in (logging.FileHandler(path), logging.StreamHandler()):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    return log


def read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class MetricsCSV:
    """One row per finished epoch. On resume, rows after the resumed epoch (written by the
    killed run after its last checkpoint) are dropped, so the file matches the state."""

    def __init__(self, path, resume_epoch=0):
        self.path = path
        rows = [r for r in read_rows(path) if int(r["epoch"]) <= resume_epoch]
        self._write(rows)

    def _write(self, rows):
        with atomic_write(self.path, "w") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow({k: row.get(k, "") for k in FIELDS})


def plot_curves(csv_path, png_path, title=""):
    """Loss and top-1 accuracy per epoch (train and val) side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(csv_path)
    epochs = [int(r["epoch"]) for r in rows]

    def col(name):
        return [float(r[name]) for r in rows]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, col("train_loss"), "o-", label="train")
    ax_loss.plot(epochs, col("val_loss"), "s-", label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, col("train_acc1"), "o-", label="train top-1")
    ax_acc.plot(epochs, col("val_acc1"), "s-", label="val top-1")
    ax_acc.plot(epochs, col("val_acc5"), "^-", label="val top-5")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return png_path
