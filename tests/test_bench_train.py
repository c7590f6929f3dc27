from helpers import run_tool


def test_bench_train_times_the_chosen_weight_gradient_routes():
    proc = run_tool("tools/bench_train.py", "--size", "16", "--batch", "4", "--steps", "1",
                    "--warmup", "0", "--classes", "10", "--device", "cpu", "--wgrad", "matmul")
    assert proc.returncode == 0, proc.stderr
    rows = [l for l in proc.stdout.splitlines() if l.startswith("| ") and "wgrad" in l]
    assert len(rows) == 1 and rows[0].startswith("| matmul wgrad")
    seconds, images_per_s = (float(c) for c in rows[0].strip("|").split("|")[1:3])
    assert seconds > 0 and abs(images_per_s - 4 / seconds) <= 0.05 * images_per_s + 0.1
