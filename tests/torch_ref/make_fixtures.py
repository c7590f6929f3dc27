"""Write the PyTorch-side fixtures of the checkpoint-converter tests, with real PyTorch.

    .torchvenv/bin/python tests/torch_ref/make_fixtures.py tests/.fixtures/torch

Runs only under the torch venv. Writes checkpoints as official RepVGG code would (torch.save of
state dicts of the reference models in torch_reference/repvgg.py: zip and legacy formats, train
and deploy forms, DataParallel prefixes, float16, non-contiguous views into one shared storage,
a grouped, an SE and a RepVGGplus model, a full training checkpoint with optimizer, scheduler,
EMA and a pickled yacs config), the reference logits on a fixed input, a checkpoint of assorted
dtypes with their expected values, and safetensors files, plus manifest.json describing each
case.
"""
import copy
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # for torch_reference
from torch_reference import repvgg as ref  # noqa: E402

# Small architectures (built from the reference constructors) next to one official variant.
SPECS = {
    "a0": {"name": "RepVGG-A0", "num_classes": 1000},
    "g2": {"family": "RepVGG", "num_blocks": [2, 2, 2, 1], "width": [0.5, 0.5, 0.5, 0.5],
           "groups": 2, "use_se": False, "num_classes": 10},
    "se": {"family": "RepVGG", "num_blocks": [1, 2, 2, 1], "width": [0.5, 0.5, 0.5, 0.5],
           "groups": 1, "use_se": True, "num_classes": 10},
    "tiny": {"family": "RepVGG", "num_blocks": [1, 1, 1, 1], "width": [0.5, 0.5, 0.5, 0.5],
             "groups": 1, "use_se": False, "num_classes": 10},
    "plus": {"family": "RepVGGplus", "num_blocks": [2, 2, 2, 1], "width": [0.25, 0.25, 0.25, 0.5],
             "num_classes": 10},
}


def build(spec, deploy=False):
    if "name" in spec:
        return ref.build(spec["name"], deploy, spec["num_classes"])
    if spec["family"] == "RepVGGplus":
        return ref.RepVGGplus(spec["num_blocks"], spec["num_classes"], spec["width"], deploy)
    return ref.RepVGG(spec["num_blocks"], spec["num_classes"], spec["width"], spec["groups"],
                      deploy, spec["use_se"])


@torch.no_grad()
def randomize(model, seed):
    """Random weights and BatchNorm statistics (a fresh BN is the identity and hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0, 0.1, generator=g)
            m.num_batches_tracked.fill_(7)
    return model.eval()


@torch.no_grad()
def logits(model, x):
    return model.eval()(torch.from_numpy(x)).numpy()


def views_into_one_storage(state_dict):
    """The same values, each tensor a view into one shared flat storage at its own offset;
    4-D weights stored channels-last, i.e. non-contiguous."""
    total = sum(t.numel() for t in state_dict.values() if t.is_floating_point())
    flat, out, offset = torch.zeros(total + 5), {}, 5
    for key, t in state_dict.items():
        if not t.is_floating_point():
            out[key] = t
            continue
        n = t.numel()
        if t.dim() == 4:
            o, i, kh, kw = t.shape
            flat[offset:offset + n] = t.permute(0, 2, 3, 1).reshape(-1)
            out[key] = flat[offset:offset + n].view(o, kh, kw, i).permute(0, 3, 1, 2)
        else:
            flat[offset:offset + n] = t.reshape(-1)
            out[key] = flat[offset:offset + n].view(t.shape)
        assert torch.equal(out[key], t)
        offset += n
    assert sum(not t.is_contiguous() for t in out.values()) > 5
    return out


def yacs_config():
    """The training config as the official train/config.py builds it: a real yacs CfgNode tree,
    cloned and frozen (pickled, it names yacs.config.CfgNode and, at protocol 2,
    __builtin__.set for the node's bookkeeping)."""
    from yacs.config import CfgNode as CN

    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.ARCH = "RepVGG-tiny"
    cfg.MODEL.NUM_CLASSES = 10
    cfg.TRAIN = CN()
    cfg.TRAIN.EPOCHS = 120
    cfg.TRAIN.BASE_LR = 0.1
    cfg.SEED = 0
    config = cfg.clone()
    config.freeze()
    return config


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
                      torch.uint8: "U8", torch.uint16: "U16", torch.uint32: "U32",
                      torch.bool: "BOOL"}


def save_safetensors(tensors, path):
    """The safetensors layout, written directly (the safetensors package is not installed)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for key, t in tensors.items():
        data = t.contiguous().view(torch.uint8).numpy().tobytes() if t.dim() else \
            t.reshape(1).view(torch.uint8).numpy().tobytes()
        header[key] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                       "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def assorted_dtypes():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=g)
    tensors = {
        "f32": torch.randn(2, 3, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.tensor([1.5, -2.25, 3.0e38, 1e-3]).bfloat16(),
        "f64": torch.randn(3, 2, generator=g).double(),
        "i64": torch.tensor([-(2 ** 40), 0, 2 ** 62]),
        "i32": torch.tensor([-7, 9], dtype=torch.int32),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "u16": torch.tensor([1, 65535, 7], dtype=torch.uint16)[1:],  # _rebuild_tensor_v3, offset
        "u32": torch.tensor([7, 2 ** 32 - 1], dtype=torch.uint32),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),           # non-contiguous
        "row_slice": base[1:3, 2:5],      # offset + strides, same storage as "transposed"
    }
    expected = {k: (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()
                for k, t in tensors.items()}
    return tensors, expected


def main(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(os.path.join(out, "input.npy"), x)
    cases = {}

    def case(name, spec, model, obj, fmt="zip", **extra):
        path = os.path.join(out, name + (".pth" if fmt != "safetensors" else ".safetensors"))
        if fmt == "safetensors":
            save_safetensors(obj, path)
        else:
            torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
        np.save(os.path.join(out, name + ".logits.npy"), logits(model, x))
        cases[name] = dict(file=os.path.basename(path), spec=SPECS[spec], format=fmt,
                           logits=name + ".logits.npy", **extra)

    a0 = randomize(build(SPECS["a0"]), 1)
    case("a0_train_zip", "a0", a0, a0.state_dict(), form="train")
    case("a0_train_legacy_ddp", "a0", a0,
         {"state_dict": {"module." + k: v for k, v in a0.state_dict().items()}}, "legacy",
         form="train")
    a0_deploy = ref.convert_to_deploy(a0)
    case("a0_deploy_zip", "a0", a0_deploy, a0_deploy.state_dict(), form="deploy")

    g2 = randomize(build(SPECS["g2"]), 2)
    half = {k: v.half() if v.is_floating_point() else v for k, v in g2.state_dict().items()}
    g2.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    case("g2_train_fp16_zip", "g2", g2, half, form="train")
    g2_deploy = ref.convert_to_deploy(g2)
    case("g2_deploy_legacy", "g2", g2_deploy, g2_deploy.state_dict(), "legacy", form="deploy")

    se = randomize(build(SPECS["se"]), 3)
    for fmt in ("zip", "legacy"):
        case("se_train_views_" + fmt, "se", se, views_into_one_storage(se.state_dict()), fmt,
             form="train")

    plus = randomize(build(SPECS["plus"]), 4)
    case("plus_train_zip", "plus", plus, plus.state_dict(), form="train")

    tiny = randomize(build(SPECS["tiny"]), 5)
    ema = copy.deepcopy(tiny)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.9).add_(0.01)
    optimizer = torch.optim.SGD(tiny.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=120)
    tiny(torch.from_numpy(x)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()
    randomize(tiny, 5)  # keep BN statistics random after the step
    # official main.py's save_checkpoint layout (plus the EMA copy its --EMA option adds)
    training = {"model": tiny.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "max_accuracy": np.float64(12.5),
                "epoch": 3, "config": yacs_config(), "ema": ema.state_dict()}
    case("tiny_full_training_zip", "tiny", tiny, training, form="train",
         ema_logits="tiny_full_training_zip.ema_logits.npy")
    np.save(os.path.join(out, "tiny_full_training_zip.ema_logits.npy"), logits(ema, x))
    case("tiny_train_safetensors", "tiny", tiny,
         {k: v for k, v in tiny.state_dict().items() if not k.endswith("num_batches_tracked")},
         "safetensors", form="train")

    # Bad heads, as torch.save writes them: a broadcast classifier (zero strides, 2^40 elements
    # over one stored row) and a classifier weight that is not 2-D.
    features = tiny.linear.in_features
    bad = dict(tiny.state_dict())
    bad["linear.weight"] = torch.zeros(1, features).expand(2 ** 40 // features, features)
    bad["linear.bias"] = torch.zeros(1).expand(2 ** 40 // features)
    torch.save(bad, os.path.join(out, "bad_broadcast_head.pth"))
    bad = dict(tiny.state_dict())
    bad["linear.weight"] = tiny.linear.weight.detach().reshape(10, features // 16, 16)
    torch.save(bad, os.path.join(out, "bad_3d_head.pth"))

    tensors, expected = assorted_dtypes()
    torch.save(tensors, os.path.join(out, "dtypes_zip.pth"))
    torch.save(tensors, os.path.join(out, "dtypes_legacy.pth"),
               _use_new_zipfile_serialization=False)
    save_safetensors({k: v for k, v in tensors.items() if k not in ("transposed", "row_slice")},
                     os.path.join(out, "dtypes.safetensors"))
    np.savez(os.path.join(out, "dtypes_expected.npz"), **expected)

    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases, "specs": SPECS}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".fixtures", "torch"))
