"""Load .pth files the way a PyTorch user would and write the reference model's logits.

    .torchvenv/bin/python tests/torch_ref/torch_logits.py INPUT.npy JOBS.json

JOBS.json: [{"pth", "spec", "deploy", "out"}, ...]. Each file is read with
torch.load(weights_only=True) into the reference model (torch_reference/repvgg.py) with strict=True.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import build, logits  # noqa: E402


def main(input_path, jobs_path):
    x = np.load(input_path)
    with open(jobs_path) as f:
        jobs = json.load(f)
    for job in jobs:
        state_dict = torch.load(job["pth"], weights_only=True)
        model = build(job["spec"], deploy=job["deploy"])
        model.load_state_dict(state_dict, strict=True)
        np.save(job["out"], logits(model, x))


if __name__ == "__main__":
    main(*sys.argv[1:])
