"""One preprocessing for evaluation and deployment (deploy/preprocess.py), recorded in the
checkpoint and in the exported model: tools/infer.py on the exported model gives tools/predict.py's
answer on the checkpoint, for a digits model and an ImageNet-style model, including images whose
centre crop offset (w - size) / 2 ends in .5."""
import re

import numpy as np
import pytest
from PIL import Image

from common.checkpoint import save_checkpoint
from deploy import preprocess as P
from helpers import run_tool
from model.checkpoint import build_model, checkpoint_dict, numpy_state_dict
from model.parity import randomize_batchnorm, sample_inputs

SIZE = 32
ARCH = {"stem": {"channels": 8, "stride": 2},
        "layers": [{"op": "repvgg", "C_in": 8, "C_out": 16, "stride": 2},
                   {"op": "repvgg", "C_in": 16, "C_out": 16, "stride": 1}],
        "head": {"channels": 24}}
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_crop_follows_torchvision_rule_and_the_spec_round_trips():
    # 39x37 at the ImageNet spec for 32 (resize 37): no resize, crop offset (39 - 32) / 2 = 3.5,
    # which torchvision's CenterCrop (int(round(3.5)) = 4) and the spec put at column 4.
    px = np.random.default_rng(0).integers(0, 256, (37, 39, 3), dtype=np.uint8)
    spec = P.imagenet_spec(SIZE)
    assert (spec.size, spec.resize) == (32, 37)
    x = P.prepare(Image.fromarray(px), spec)
    direct = px[2:34, 4:36].astype(np.float32) / 255  # top: round(2.5) = 2 (half to even)
    expected = ((direct - np.array(P.IMAGENET_MEAN, np.float32))
                / np.array(P.IMAGENET_STD, np.float32)).transpose(2, 0, 1)
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
    assert P.PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert P.PreprocessSpec.from_dict(P.small_spec(16).to_dict()) == P.small_spec(16)
    with pytest.raises(P.PreprocessSpecError, match="crop"):
        P.PreprocessSpec.from_dict(dict(spec.to_dict(), crop="center-floor"))


def write_images(folder):
    """Odd and even crop offsets, a non-square photo-like image and a small digit-like one."""
    rng = np.random.default_rng(5)
    paths = []
    for i, (w, h) in enumerate([(39, 37), (35, 32), (56, 41), (8, 8), (45, 45)]):
        ramp = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3))
        a = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / ("img%d_%dx%d.png" % (i, w, h)))
        Image.fromarray(a).save(paths[-1])
    return paths


def parse_predict(stdout):
    out = {}
    for line in stdout.strip().splitlines():
        path, rest = line.rsplit(": ", 1)[0], line.rsplit(": ", 1)[1]
        out[path] = [(m.group(1), float(m.group(2)))
                     for m in re.finditer(r"(\w+) ([\d.]+)%", rest)]
    return out


def parse_infer(stdout):
    out, current = {}, None
    for line in stdout.strip().splitlines():
        m = re.match(r"\s+\d\. (\w+)\s+([\d.]+)%$", line)
        if m:
            out[current].append((m.group(1), float(m.group(2))))
        else:
            current = line.strip()
            out[current] = []
    return out


@pytest.mark.parametrize("dataset,fmt", [("digits", "mge"), ("imagenet", "onnx")])
def test_infer_on_the_export_gives_predicts_answer(tmp_path, dataset, fmt):
    rng = np.random.default_rng(11)
    net = build_model(ARCH, len(CLASSES))
    randomize_batchnorm(net, rng, sample_inputs(rng, (8, 3, SIZE, SIZE)))
    spec = P.spec_for_dataset(dataset, SIZE)
    ckpt = tmp_path / "model.pkl"
    # What train.py records (Trainer.data_info): classes, data set, size and the spec.
    save_checkpoint(checkpoint_dict(numpy_state_dict(net), ARCH, "train", classes=CLASSES,
                                    dataset=dataset, image_size=SIZE,
                                    preprocess=spec.to_dict()), ckpt)
    out = tmp_path / ("model." + fmt)
    proc = run_tool("tools/export.py", "--load", ckpt, "--output", out, "--threads", 2)
    assert proc.returncode == 0, proc.stderr
    assert "note:" not in proc.stderr  # the spec was recorded
    images = write_images(tmp_path)
    predicted = run_tool("tools/predict.py", "--checkpoint", ckpt, *images, "--device", "cpu")
    inferred = run_tool("tools/infer.py", out, *images, "--threads", 2)  # no flags
    assert predicted.returncode == 0, predicted.stderr
    assert inferred.returncode == 0, inferred.stderr
    expected, got = parse_predict(predicted.stdout), parse_infer(inferred.stdout)
    assert sorted(expected) == sorted(got) == sorted(str(p) for p in images)
    for path in expected:
        # The same answer from two runtimes: the same values (both print two decimals), the
        # same classes except where two of them tie to within that (kernels round differently
        # on another CPU), and the top class agrees.
        assert got[path][0][0] == expected[path][0][0], path
        for (_, a), (_, b) in zip(got[path], expected[path]):
            assert abs(a - b) <= 0.01 + 1e-9, path
        values = dict(expected[path])
        for name, value in got[path]:
            if name not in values:  # a class that tied with the last one predict printed
                assert abs(value - expected[path][-1][1]) <= 0.01 + 1e-9, path
    # Different images get different answers (the check is not on a constant output).
    assert len({tuple(v) for v in got.values()}) == len(images)
