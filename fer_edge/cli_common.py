"""What every fer_edge command shares: user errors become one line on stderr and an exit code."""

import os
import sys

from .errors import FerEdgeError


def run_main(prog, body):
    """Run ``body()`` and turn the failures a user can fix into one line without a traceback.

    Args:
        prog: the command name, prefixed to error lines.
        body: callable returning the exit code.

    Returns:
        The exit code: body's, 2 for a user error, 130 when interrupted, 141 (as for SIGPIPE) when
        stdout was closed early.
    """
    try:
        return body() or 0
    except FerEdgeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        name = exc.filename or ""
        print(f"{prog}: error: {name}: {exc.strerror}" if name else f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``fer-eval ... | head``): not an error of ours. Point stdout at devnull so
        # the interpreter's final flush does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
