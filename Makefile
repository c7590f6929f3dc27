# The two commands a new user types:
#   make run    set up, then run the main job on its built-in default
#   make test   set up, then run the whole test suite (what CI runs)
PY := .venv/bin/python

.PHONY: setup setup-torch run test verify bench bench-ckpt bench-train bench-deploy bench-search clean

setup:
	@scripts/bootstrap.sh main

setup-torch:
	@scripts/bootstrap.sh torch

run: setup
	$(PY) train.py --arch RepVGG-A0

test: setup setup-torch
	$(PY) -m pytest -q tests

verify: setup
	$(PY) verify.py

bench: setup
	$(PY) benchmarks/bench.py

bench-ckpt: setup setup-torch
	$(PY) benchmarks/bench_ckpt.py

bench-train: setup
	$(PY) benchmarks/bench_train.py

bench-deploy: setup setup-torch
	$(PY) benchmarks/bench_deploy.py

bench-search: setup
	$(PY) benchmarks/bench_search.py

clean:
	rm -rf .venv .torchvenv tests/.fixtures .pytest_cache
