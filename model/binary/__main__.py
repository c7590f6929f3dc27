"""``python -m model.binary``: print the primitive table (the Markdown of docs/binary.md)."""
from common.cli import run
from model.binary.primitives import primitive_table

run(lambda argv: print(primitive_table()))
