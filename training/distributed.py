"""Data-parallel training over several GPUs / machines with ``megengine.distributed``.

One process per GPU, started by ``megengine.distributed.launcher``; gradients are averaged by
the GradManager's all-reduce callback (see loop.py), each rank reads its own shard of every
epoch (``MapSampler.scatter``), and only rank 0 logs, evaluates and writes files.

Ranks: with ``ngpus`` per machine on ``machines`` machines, the global world size is
``ngpus * machines`` and machine ``machine_rank`` runs ranks ``machine_rank*ngpus ...``.
"""
from errors import UserError


def world(ngpus, machines=1, machine_rank=0):
    """(world_size, first rank on this machine), validating the arguments."""
    if ngpus < 1:
        raise UserError("--ngpus must be at least 1 (got %d)" % ngpus)
    if machines < 1:
        raise UserError("--world-size (number of machines) must be at least 1 (got %d)"
                        % machines)
    if not 0 <= machine_rank < machines:
        raise UserError("--rank must be in 0..%d for --world-size %d (got %d)"
                        % (machines - 1, machines, machine_rank))
    return ngpus * machines, machine_rank * ngpus


def shard_indices(n, world_size, rank):
    """The sample positions rank ``rank`` reads from an epoch order of length ``n``: the order
    padded by repeating its start to a multiple of world_size, then every world_size-th entry
    (MegEngine's ``MapSampler.scatter``)."""
    per_rank = -(-n // world_size)
    padded = list(range(n)) + list(range(per_rank * world_size - n))
    return padded[rank::world_size]


def check_gpus(ngpus, machines=1):
    """Refuse data-parallel training when this machine has fewer than ``ngpus`` usable GPUs."""
    from common.device import cuda_available
    import megengine as mge
    have = mge.get_device_count("gpu") if cuda_available() else 0
    if have < ngpus:
        what = ("--ngpus %d" % ngpus if machines == 1 else
                "--world-size %d with --ngpus %d" % (machines, ngpus))
        raise UserError("data-parallel training (%s) needs %d CUDA GPU%s on this machine, but "
                        "%s usable here" % (what, ngpus, "" if ngpus == 1 else "s",
                                            "none is" if have == 0 else "only %d %s" % (
                                                have, "is" if have == 1 else "are")))


def launch(worker, ngpus, machines, machine_rank, addr, port, *args):
    """Run ``worker(*args)`` in ``ngpus`` processes on this machine as part of the world."""
    import megengine.distributed as dist
    world_size, rank_start = world(ngpus, machines, machine_rank)
    dist.launcher(worker, n_gpus=ngpus, world_size=world_size, rank_start=rank_start,
                  master_ip=addr, port=port)(*args)
