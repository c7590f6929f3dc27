"""What every command-line entry point shares: the parser, argument checks, and the runner.

- ``ArgumentParser(doc)``: description = the docstring's first paragraph, epilog = the rest
  (examples), help by ``HelpFormatter``; a bad argument is one line ``error: ...`` and exit 2;
  no prefix abbreviations (``--epoch`` is not ``--epochs``).
- ``add_checkpoint_argument`` / ``checkpoint_of``: one spelling of the checkpoint in every tool
  (positional, ``--checkpoint`` or ``--load``).
- ``HelpFormatter``: keeps the layout of descriptions and shows ``(default: X)`` only where X is a
  real value: not for required options, options whose default is None (their help says what
  happens), flags (store_true / store_false: "(default: True)" on ``--no-progress`` reads as
  "on by default"), or help that already names its default.
- ``integer`` / ``number``: argparse ``type=`` checks with bounds (``--top 0``, ``--batch-size
  -5`` are refused as the argument's error, before any work).
- ``count(n, noun)``: ``1 image`` / ``2 images`` in messages.
- ``quiet_known_warnings()``: the one filter for numpy's note about this CPU's float subnormals.
- ``run(main)``: user errors (bad input files, refusals) become one line on stderr and exit
  code 1; a bad command line is argparse's exit code 2; a closed pipe (``tool | head``) ends
  quietly.
"""
import argparse
import os
import sys
import warnings

from errors import UserError  # noqa: F401  (re-exported for tools)

USER_ERROR_EXIT = 1   # a refused input: one ``error:`` line
USAGE_ERROR_EXIT = 2  # a bad command line (argparse's convention)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; ``(default: X)`` appended only where it informs."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is argparse.SUPPRESS or action.required
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                       argparse._StoreConstAction, argparse._HelpAction,
                                       argparse._VersionAction))
                or not action.option_strings or "default" in text.lower()
                or default == [] or default == ""):
            return text
        return "%s (default: %s)" % (text, "%(default)s")


class ArgumentParser(argparse.ArgumentParser):
    """``ArgumentParser(__doc__)``: the docstring's first paragraph describes the tool, the
    rest (usage examples, notes) is shown after the options. Errors are one line."""

    def __init__(self, doc=None, **kwargs):
        if doc is not None:
            head, _, rest = doc.strip("\n").partition("\n\n")
            kwargs.setdefault("description", head)
            if rest.strip():
                kwargs.setdefault("epilog", rest)
        kwargs.setdefault("formatter_class", HelpFormatter)
        # No prefix matching: ``--epoch 3`` must be refused, not silently read as ``--epochs``.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def error(self, message):
        self.exit(2, "error: %s (see %s --help)\n" % (message, self.prog))


CHECKPOINT_FLAGS = ("--checkpoint", "--load")


def add_checkpoint_argument(p, help="model checkpoint (.pkl), train or deploy form",
                            positional=True):
    """The checkpoint a tool reads, spelt the same in every tool: positional (where the tool
    has one main input) or ``--checkpoint`` / ``--load`` (aliases). ``checkpoint_of`` reads it."""
    if positional:
        p.add_argument("checkpoint_arg", nargs="?", metavar="CHECKPOINT", help=help)
        help = "the checkpoint, as an option (same as the positional CHECKPOINT)"
    p.add_argument(*CHECKPOINT_FLAGS, dest="checkpoint", metavar="CKPT", help=help)


def checkpoint_of(p, args, required=True):
    """The one checkpoint path of ``add_checkpoint_argument`` (``args.checkpoint``), or a usage
    error when it is missing or given twice."""
    given = [c for c in (getattr(args, "checkpoint_arg", None), args.checkpoint) if c is not None]
    if len(given) > 1:
        p.error("the checkpoint is given twice (%s); give it once" % " and ".join(given))
    if required and not given:
        p.error("a checkpoint is required (CHECKPOINT, or --checkpoint / --load CKPT)")
    args.checkpoint = given[0] if given else None
    if hasattr(args, "checkpoint_arg"):
        del args.checkpoint_arg
    return args.checkpoint


def _bounded(convert, kind, lo, hi, lo_open):
    def check(text):
        try:
            value = convert(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError("expected %s, got %r" % (kind, text)) from None
        if value != value:  # NaN
            raise argparse.ArgumentTypeError("expected %s, got %r" % (kind, text))
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError("must be %s %s, got %s"
                                             % ("above" if lo_open else "at least", lo, text))
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError("must be at most %s, got %s" % (hi, text))
        return value

    check.__name__ = kind
    return check


def integer(min=None, max=None):
    """argparse ``type=``: an int within [min, max] (either bound optional)."""
    return _bounded(int, "an integer", min, max, False)


def number(min=None, max=None, above=None):
    """argparse ``type=``: a finite float, >= min (or > above) and <= max."""
    import math

    def finite(text):
        value = float(text)
        if math.isinf(value):
            raise ValueError(text)
        return value

    if above is not None:
        return _bounded(finite, "a number", above, max, True)
    return _bounded(finite, "a number", min, max, False)


def count(n, noun, plural=None):
    """``1 image``, ``2 images``, ``0 images``: a number with its noun in the right form."""
    return "%d %s" % (n, noun if n == 1 else plural or noun + "s")


def quiet_known_warnings():
    """Silence numpy's note about the smallest subnormal being zero (printed when
    scikit-learn or numpy's finfo meets a CPU with flush-to-zero set; harmless)."""
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal")


def run(main, argv=None):
    """Call ``main(argv)``; turn user errors into ``error: <message>`` and exit status 1."""
    quiet_known_warnings()
    try:
        code = main(argv)
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (``tool | head``): stop quietly, as a Unix tool killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    sys.exit(code or 0)
