"""Records of a run: per-epoch metrics as CSV, and a PNG of the curves (rewritten every epoch,
so an interrupted run has one)."""
import csv
import os

from common.atomic import atomic_write

FIELDS = ("epoch", "step", "lr", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc5",
          "ema_val_loss", "ema_val_acc1", "ema_val_acc5", "train_images_per_s", "epoch_seconds",
          "skipped_images")


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


def plot_curves(csv_path, png_path, title="", num_classes=None):
    """Write ``curves_figure`` of the CSV's rows to ``png_path``."""
    fig = curves_figure(read_rows(csv_path), title, num_classes)
    import matplotlib.pyplot as plt
    with atomic_write(png_path) as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return png_path


def curves_figure(rows, title="", num_classes=None):
    """Loss (log scale) and accuracy per epoch (train, val, and the EMA's val when recorded)
    side by side, integer epoch ticks; val top-5 only when there are more than 5 classes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) for r in rows]

    def col(name):
        return [float(r[name]) if r.get(name) not in (None, "") else float("nan") for r in rows]

    has_ema = any(r.get("ema_val_acc1") for r in rows)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, col("train_loss"), "o-", label="train")
    ax_loss.plot(epochs, col("val_loss"), "s-", label="val")
    if has_ema:
        ax_loss.plot(epochs, col("ema_val_loss"), "d--", label="val (EMA)")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (log scale)")
    ax_acc.plot(epochs, col("train_acc1"), "o-", label="train top-1")
    ax_acc.plot(epochs, col("val_acc1"), "s-", label="val top-1")
    if num_classes is None or num_classes > 5:
        ax_acc.plot(epochs, col("val_acc5"), "^-", label="val top-5")
    if has_ema:
        ax_acc.plot(epochs, col("ema_val_acc1"), "d--", label="val top-1 (EMA)")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig
