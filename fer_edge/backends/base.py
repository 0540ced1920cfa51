"""The interface every inference backend implements (after Polygraphy's runners).

A runner wraps one model file. ``activate()`` loads it, ``infer(feed)`` runs it on a dict of named input
arrays and returns a dict of named outputs, ``deactivate()`` frees it; it is also a context manager.
The base class checks inputs and times ``infer``; a backend fills in the ``*_impl`` methods.
"""

import dataclasses
import time

import numpy as np

from ..errors import FerEdgeError
from ..faces import InputError


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    """Name, dtype and shape of a model input or output; a dynamic dimension is None."""

    name: str
    dtype: np.dtype
    shape: tuple

    def describe(self):
        """``name: dtype[d0, d1, ...]`` with ``?`` for dynamic dimensions."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name}[{dims}]"


class BaseRunner:
    """One loaded model on one inference backend.

    Subclasses set ``name`` and implement ``activate_impl``, ``infer_impl``, ``deactivate_impl``,
    ``get_input_metadata_impl`` and ``get_output_metadata_impl``; they may override ``read_metadata``,
    ``describe`` and ``max_batch``.
    """

    name = "base"

    def __init__(self, path):
        """Args:
            path: the model file; nothing is loaded until ``activate()``.
        """
        self.path = str(path)
        self.is_active = False
        self.inference_time = None
        self._inputs = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def activate(self):
        """Load the model; calling it on an active runner does nothing.

        Returns:
            self.
        """
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
            self._inputs = {m.name: m for m in self.get_input_metadata_impl()}
        return self

    def deactivate(self):
        """Free the model and its buffers; calling it on an inactive runner does nothing."""
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False
                self._inputs = None

    def __enter__(self):
        return self.activate()

    def __exit__(self, exc_type, exc, tb):
        self.deactivate()

    # -- introspection -----------------------------------------------------------------------------------
    def _require_active(self, what):
        if not self.is_active:
            raise FerEdgeError(f"{self.name} runner for {self.path}: call activate() before {what}")

    def get_input_metadata(self):
        """The model's inputs.

        Returns:
            list of TensorMeta, in the model's order.
        """
        self._require_active("get_input_metadata()")
        return list(self._inputs.values())

    def get_output_metadata(self):
        """The model's outputs.

        Returns:
            list of TensorMeta, in the model's order.
        """
        self._require_active("get_output_metadata()")
        return list(self.get_output_metadata_impl())

    def last_inference_time(self):
        """Seconds the last ``infer`` call spent in the backend (None before the first call)."""
        return self.inference_time

    @property
    def max_batch(self):
        """Largest batch the loaded model accepts, or None when unlimited."""
        return None

    def read_metadata(self):
        """The fer_edge ModelMetadata the model file carries, or None (see fer_edge.metadata)."""
        return None

    def describe(self):
        """What really runs the model, for ``Runtime.info()``.

        Returns:
            dict with at least ``backend``, ``providers`` and ``precision`` (None when unknown).
        """
        return {"backend": self.name, "providers": [], "precision": None}

    # -- inference ---------------------------------------------------------------------------------------
    def infer(self, feed, check_inputs=True):
        """Run the model.

        Args:
            feed: dict input name -> numpy array.
            check_inputs: check names, dtypes and static dimensions first (cheap; turn off only in loops
                whose inputs are already known to be right).

        Returns:
            dict output name -> numpy array (owned by the caller).
        """
        self._require_active("infer()")
        if check_inputs:
            self._check_feed(feed)
        start = time.perf_counter()
        out = self.infer_impl(feed)
        self.inference_time = time.perf_counter() - start
        return out

    def _check_feed(self, feed):
        if set(feed) != set(self._inputs):
            raise InputError(f"{self.path} takes inputs {sorted(self._inputs)}, got {sorted(feed)}")
        for name, arr in feed.items():
            meta = self._inputs[name]
            if not isinstance(arr, np.ndarray) or arr.dtype != meta.dtype:
                got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
                raise InputError(f"input {name} must be a {np.dtype(meta.dtype).name} array, got {got}")
            if arr.ndim != len(meta.shape) or any(d is not None and d != a for d, a in zip(meta.shape, arr.shape)):
                raise InputError(f"input {meta.describe()} cannot take shape {arr.shape}")
            if self.max_batch is not None and arr.ndim and arr.shape[0] > self.max_batch:
                raise InputError(f"input {name} batch {arr.shape[0]} exceeds this model's maximum {self.max_batch}")

    # -- to implement ------------------------------------------------------------------------------------
    def activate_impl(self):
        raise NotImplementedError

    def deactivate_impl(self):
        raise NotImplementedError

    def infer_impl(self, feed):
        raise NotImplementedError

    def get_input_metadata_impl(self):
        raise NotImplementedError

    def get_output_metadata_impl(self):
        raise NotImplementedError
