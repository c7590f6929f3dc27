"""Shared plumbing for the command-line tools: device selection, checkpoints, one-line errors."""
