"""How close int8 logits are to float logits: top-1 agreement and signal-to-quantization-noise
ratio, plus top-1 accuracy when labels are known."""
import dataclasses

import numpy as np

# Below this logit SQNR tools/quantize.py warns. Every PTQ result measured in docs/int8.md is
# above it (8.8 to 26.2 dB, losing at most 2.95 points), while an imported ImageNet A0 written at
# 4.4 dB had lost 12.5 points: far enough below to mean "check this model before using it".
LOW_SQNR_DB = 8.0


def sqnr_db(reference, quantized):
    """``10 log10(sum(ref^2) / sum((ref - q)^2))`` over all logits (inf when equal)."""
    ref = np.asarray(reference, np.float64)
    noise = float(((ref - np.asarray(quantized, np.float64)) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(signal / noise)


@dataclasses.dataclass
class Agreement:
    images: int
    top1_agreement: float        # fraction of images with the same argmax
    sqnr_db: float
    float_top1: float = None     # accuracy (fraction) against labels, when known
    int8_top1: float = None

    def describe(self, name="int8", reference="float"):
        text = "%s vs %s on %d image%s: top-1 agreement %.2f%%, logit SQNR %.1f dB" % (
            name, reference, self.images, "" if self.images == 1 else "s",
            100 * self.top1_agreement, self.sqnr_db)
        if self.float_top1 is not None:
            text += "; top-1 %s %.2f%%, int8 %.2f%% (%+.2f points)" % (
                reference, 100 * self.float_top1, 100 * self.int8_top1,
                100 * (self.int8_top1 - self.float_top1))
        return text


def low_sqnr_warning(result, threshold=None):
    """The one ``warning:`` line for an int8 model far from its float (``result.sqnr_db`` below
    ``threshold``, default ``LOW_SQNR_DB``), or None."""
    threshold = LOW_SQNR_DB if threshold is None else threshold
    if not result.sqnr_db < threshold:
        return None
    return ("warning: the int8 logits are far from the float model's (SQNR %.1f dB, below %g "
            "dB): expect lost accuracy; try --qat, the .onnx format (per-channel weights), or "
            "more --calib-images of the model's own data" % (result.sqnr_db, threshold))


def agreement(float_logits, int8_logits, labels=None):
    a, b = np.asarray(float_logits), np.asarray(int8_logits)
    result = Agreement(len(a), float(np.mean(a.argmax(1) == b.argmax(1))), sqnr_db(a, b))
    if labels is not None:
        labels = np.asarray(labels)
        result.float_top1 = float(np.mean(a.argmax(1) == labels))
        result.int8_top1 = float(np.mean(b.argmax(1) == labels))
    return result
