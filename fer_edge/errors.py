"""Exceptions that carry a message meant for the user, printed by the CLIs without a traceback."""


class FerEdgeError(Exception):
    """Base class of the errors fer_edge raises for bad input; the message names the culprit."""


class DatasetError(FerEdgeError, ValueError):
    """A dataset file or folder cannot be read as FER2013."""


class ModelError(FerEdgeError, ValueError):
    """A model file is missing, unreadable, or lacks the metadata needed to use it."""


class InputError(FerEdgeError, ValueError):
    """An array, box list, frame or video source handed to fer_edge cannot be used; the message says why."""


class MissingExtraError(FerEdgeError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module_name, extra):
    """Import an optional module, or raise MissingExtraError naming the pip extra.

    Args:
        module_name: dotted module name, e.g. "torch".
        extra: the fer_edge extra that installs it, e.g. "train".

    Returns:
        The imported module.
    """
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module_name} is not installed: pip install 'fer_edge[{extra}]' ({exc})"
        ) from None
