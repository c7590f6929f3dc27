"""Running a command-line entry point: user errors become one line on stderr and exit code 2."""
import sys

from errors import UserError  # noqa: F401  (re-exported for tools)


def run(main, argv=None):
    """Call ``main(argv)``; turn user errors into ``error: <message>`` and exit status 2."""
    try:
        code = main(argv)
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
