"""Writing files so that a crash never leaves a half-written output behind."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_output(path, suffix=""):
    """Yield a temporary path beside ``path``; it is renamed onto ``path`` only if the block succeeds.

    Args:
        path: the final file.
        suffix: extension of the temporary file (some writers, such as OpenCV's, choose the format by it).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # ".part" goes before the suffix: writers such as OpenCV's choose the format by the extension.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part" + suffix)
    os.close(fd)
    # mkstemp creates the file 0600; give the final file the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path, data):
    """Write bytes to ``path`` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_text(path, text):
    """Write text to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
