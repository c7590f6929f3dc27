"""What a file is, from its first bytes, so a file of the wrong kind given as a checkpoint gets
one line saying what it is and what to do, instead of the unpickler's error.

``kind_of(path)``: "torch" (a PyTorch ``torch.save`` file: a zip holding ``data.pkl``, or the
legacy pickle starting with torch's magic number), "safetensors", "onnx", "mge" (MegEngine graph dump: the
``mgv2`` flatbuffer identifier after the (size-prefixed) root offset, or the older ``MGBC`` / ``mgb`` headers), "bnn" (this
toolkit's packed binary model: a ``.npz`` zip holding ``header.npy``), "image:PNG" (and JPEG,
GIF, BMP, TIFF, WEBP), or None (anything else, such as the pickle a MegEngine checkpoint is).
``refuse_non_checkpoint(path)`` raises ``CheckpointError`` for every kind but None.

Only headers and zip member names are read; nothing is decoded or run.
"""
import os
import zipfile

from errors import CheckpointError

# torch.save's legacy (non-zip) format: a pickle whose first object is this magic number.
_TORCH_LEGACY = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_IMAGES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
           (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
# ONNX ModelProto: field 1 (ir_version, a small varint) first, then one of the other fields.
_ONNX_NEXT_TAGS = {0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42, 0x72}


def _looks_onnx(head):
    if len(head) < 3 or head[0] != 0x08 or not 1 <= head[1] <= 30:
        return False
    return head[2] in _ONNX_NEXT_TAGS


def _zip_kind(path):
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"
    if "header.npy" in names:
        return "bnn"
    return None


def kind_of(path):
    """The kind of file at ``path`` (see the module docstring), or None; None too when it
    cannot be read (the caller's own open reports that)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith(_TORCH_LEGACY):
        return "torch"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head[8:10] in (b'{"', b"{ ") and 2 <= int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors"  # an 8-byte header length, then the JSON header
    if b"mgv2" in head[4:12] or head.startswith((b"MGBC", b"mgb")):
        return "mge"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image:WEBP"
    for magic, name in _IMAGES:
        if head.startswith(magic):
            return "image:" + name
    if _looks_onnx(head):
        return "onnx"
    return None


def _as_pkl(path):
    return os.path.splitext(path)[0] + ".pkl"


def refuse_non_checkpoint(path):
    """``CheckpointError`` (one line: what the file is, what to do) unless ``path`` may be a
    MegEngine checkpoint."""
    kind = kind_of(path)
    if kind is None:
        return
    exported = "; give the .pkl checkpoint it was exported from, or run it with tools/infer.py"
    if kind == "torch":
        message = ("is a PyTorch checkpoint: import it with python -m ckpt_converter %s "
                   "--arch ARCH -o %s" % (path, _as_pkl(path)))
    elif kind == "safetensors":
        message = ("is a safetensors weight file: import it with python -m ckpt_converter %s "
                   "--arch ARCH -o %s" % (path, _as_pkl(path)))
    elif kind == "onnx":
        message = "is an ONNX model, not a checkpoint" + exported
    elif kind == "mge":
        message = "is an exported MegEngine graph (.mge), not a checkpoint" + exported
    elif kind == "bnn":
        message = "is a packed binary model (.bnn), not a checkpoint" + exported
    else:
        message = ("is a %s image, not a checkpoint; give the model's .pkl checkpoint"
                   % kind.split(":", 1)[1])
    raise CheckpointError("%s %s" % (path, message))
