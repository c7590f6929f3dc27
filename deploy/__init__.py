"""Deployment: dumping a deploy-form model as a MegEngine graph, running it with Lite, and
preparing its input. Nothing here imports ``model``."""
