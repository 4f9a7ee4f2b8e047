"""One-line errors for every stage: raise UserError, wrap main() with run_main()."""

import sys


class UserError(Exception):
    """A problem with the user's input or set-up, reported as one line, exit code 2."""


def run_main(main, argv=None):
    """Call main(argv); turn UserError into 'error: ...' on stderr and a non-zero exit."""
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
