"""One timing of ``deploy.route``'s measurement, in a process of its own (``common.children``:
deadline, address-space limit, death with the parent):

    python -m deploy.route_child FILE RUNTIME THREADS BATCH MAX_GMACS MAX_MEMORY MAX_BATCH

opens FILE as ``deploy.runtime.open_onnx`` does with RUNTIME forced (so through
``deploy/onnx_check.py`` again, with the same budgets: this process trusts no more than its
parent does), runs it ``WARMUP`` times and ``RUNS`` timed times on random input of BATCH rows,
and prints ``{"seconds": median seconds per image}``. One runtime per process: no two
runtimes' thread pools are alive together.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP, RUNS = 2, 5


def time_file(path, runtime, threads, batch, limits):
    import numpy as np

    from common.timing import interleaved_medians
    from deploy.runtime import open_onnx

    model = open_onnx(path, threads, limits=limits, runtime=runtime)
    x = np.random.default_rng(0).standard_normal(
        (batch,) + tuple(model.input_shape[1:])).astype(np.float32)
    return interleaved_medians({"m": lambda: model(x)}, WARMUP, RUNS)["m"] / batch


def main(argv):
    sys.path.insert(0, ROOT)
    from common.limits import Limits

    path, runtime, threads, batch = argv[0], argv[1], int(argv[2]), int(argv[3])
    limits = Limits(max_gmacs=float(argv[4]), max_memory=int(argv[5]), max_batch=int(argv[6]))
    print(json.dumps({"seconds": time_file(path, runtime, threads, batch, limits)}))


if __name__ == "__main__":
    main(sys.argv[1:])
