"""Data sets and input pipelines. Model code never imports this package."""
