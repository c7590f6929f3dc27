"""Training RepVGG models on MegEngine: recipe, optimizer, schedule, loop, checkpoints, records.
Model code never imports this package."""
