"""What every fer_edge command shares: user errors become one line on stderr and an exit code."""

import os
import sys

from .errors import FerEdgeError


class _StdoutReaderMayLeave:
    """stdout that, once its reader has gone (``fer-train ... | head``), drops output instead of raising.

    A command must not lose its work to a closed pipe: training goes on, files asked for are written.
    """

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text):
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop_from_now_on()
        return len(text)

    def flush(self):
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop_from_now_on()

    def _drop_from_now_on(self):
        self.reader_gone = True
        # Point the descriptor at devnull so the text still buffered, flushed at exit, raises no second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())

    def __getattr__(self, name):
        return getattr(self._stream, name)


def run_main(prog, body):
    """Run ``body()`` and turn the failures a user can fix into one line without a traceback.

    Args:
        prog: the command name, prefixed to error lines.
        body: callable returning the exit code.

    Returns:
        The exit code: body's, 2 for a user error, 130 when interrupted, 141 (as for SIGPIPE) when
        stdout was closed early and the body otherwise succeeded.
    """
    stdout = sys.stdout = _StdoutReaderMayLeave(sys.stdout)
    try:
        code = body() or 0
        stdout.flush()
        return 141 if stdout.reader_gone and code == 0 else code
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
    finally:
        sys.stdout = stdout._stream
