"""The independent PyTorch side of every MegEngine-vs-PyTorch comparison (tests, benchmarks).

Runs only under the PyTorch venv (.torchvenv) and imports nothing from the project, so that
what it computes owes nothing to the code it checks. ``torch_reference.repvgg`` is the official
RepVGG / RepVGGplus design with the official parameter names.
"""
