"""Differentiable architecture search (FBNet) and width search (TAS) over the project's
candidate blocks: spaces as data, a measured latency table, the supernet, its training, and the
derivation of an ``arch.json`` that ``model.derived`` builds and ``train.py --arch`` trains."""
