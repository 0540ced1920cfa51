"""ONNX Runtime backend: one InferenceSession on the best execution providers that really load."""

import os

import numpy as np

from ..errors import FerEdgeError, MissingExtraError, ModelError
from ..metadata import from_custom_map
from .base import BaseRunner, TensorMeta

#: Providers ``providers=None`` tries, fastest first; ONNX Runtime falls back down this list by itself.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError(f"onnxruntime is not installed: pip install onnxruntime, or 'fer_edge[gpu]' "
                                f"for the GPU build ({exc})") from None
    return onnxruntime


def cache_dir():
    """Folder for ONNX Runtime's TensorRT engine cache (``$FER_EDGE_CACHE/trt`` or ``~/.cache/fer_edge/trt``)."""
    root = os.environ.get("FER_EDGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fer_edge")
    return os.path.join(root, "trt")


def choose_providers(requested, available):
    """The provider list to ask ONNX Runtime for.

    Args:
        requested: None for automatic choice, or a list of provider names / (name, options) pairs.
        available: ``onnxruntime.get_available_providers()``.

    Returns:
        list of provider names or (name, options) pairs.

    Raises:
        FerEdgeError: a requested provider is not compiled into this ONNX Runtime.
    """
    if requested is None:
        return [p for p in PROVIDER_PREFERENCE if p in available] or ["CPUExecutionProvider"]
    if isinstance(requested, str):
        requested = [requested]
    out = []
    for entry in requested:
        name = entry[0] if isinstance(entry, (tuple, list)) else entry
        if name not in available:
            raise FerEdgeError(f"ONNX Runtime provider {name} is not available here; available: "
                               f"{', '.join(available)} (GPU providers need: pip install 'fer_edge[gpu]')")
        out.append(entry)
    return out


class OnnxrtRunner(BaseRunner):
    """Runs an .onnx model with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, path, providers=None, threads=None, spin=None, profile_batch=64):
        """Args:
            path: the .onnx file.
            providers: None to take TensorRT, then CUDA, then CPU, whichever really load; or an explicit list
                (names or (name, options) pairs), which must load as asked.
            threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
            spin: let idle intra-op threads spin (None: ONNX Runtime's default). Turning it off leaves the
                cores to the other stages of a video pipeline.
            profile_batch: the batch the TensorRT provider's engine is tuned for (it accepts 1..4x that).
        """
        super().__init__(path)
        self.requested = providers
        self.threads = threads
        self.spin = spin
        self.profile_batch = int(profile_batch)
        self.session = None
        self.providers = []

    def _session_options(self, ort):
        so = ort.SessionOptions()
        if self.threads is not None:
            if int(self.threads) < 1:
                raise FerEdgeError(f"threads must be >= 1, got {self.threads}")
            so.intra_op_num_threads = int(self.threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # keep ONNX Runtime's warnings about unused initializers off the user's screen
        if self.spin is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        return so

    def _provider_options(self, ort, providers):
        """Give the TensorRT provider an engine cache and a batch range, so it builds its engine once."""
        names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
        if "TensorrtExecutionProvider" not in names:
            return providers
        probe = ort.InferenceSession(self.path, self._session_options(ort), providers=["CPUExecutionProvider"])
        shapes = {}
        for inp in probe.get_inputs():
            dims = [d if isinstance(d, int) else None for d in inp.shape]
            def fmt(batch):
                return "x".join(str(batch if (i == 0 and d is None) else (d or 1)) for i, d in enumerate(dims))
            shapes[inp.name] = (fmt(1), fmt(self.profile_batch), fmt(4 * self.profile_batch))
        del probe
        opts = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache_dir(),
                "trt_timing_cache_enable": "True",
                "trt_profile_min_shapes": ",".join(f"{n}:{s[0]}" for n, s in shapes.items()),
                "trt_profile_opt_shapes": ",".join(f"{n}:{s[1]}" for n, s in shapes.items()),
                "trt_profile_max_shapes": ",".join(f"{n}:{s[2]}" for n, s in shapes.items())}
        os.makedirs(cache_dir(), exist_ok=True)
        return [("TensorrtExecutionProvider", opts) if p == "TensorrtExecutionProvider" else p for p in providers]

    def activate_impl(self):
        ort = _onnxruntime()
        if not os.path.isfile(self.path):
            raise ModelError(f"{self.path}: model file not found")
        if os.path.getsize(self.path) == 0:
            raise ModelError(f"{self.path}: model file is empty")
        providers = choose_providers(self.requested, ort.get_available_providers())
        try:
            providers = self._provider_options(ort, providers)
            self.session = ort.InferenceSession(self.path, self._session_options(ort), providers=providers)
        except FerEdgeError:
            raise
        except Exception as exc:  # ONNX Runtime raises its own exception types for every load failure
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path} is not a loadable ONNX model ({detail})") from None
        self.providers = self.session.get_providers()
        if self.requested is not None:
            first = providers[0][0] if isinstance(providers[0], (tuple, list)) else providers[0]
            if first not in self.providers:
                loaded = self.providers
                self.deactivate_impl()
                raise FerEdgeError(f"ONNX Runtime could not load {first} for {self.path} (it loaded {loaded}); "
                                   "check the CUDA/cuDNN/TensorRT libraries, or leave providers unset")
        self._input_meta = [self._meta(i) for i in self.session.get_inputs()]
        self._output_meta = [self._meta(o) for o in self.session.get_outputs()]
        self._output_names = [o.name for o in self._output_meta]

    @staticmethod
    def _meta(node):
        dtype = _ORT_TYPES.get(node.type)
        if dtype is None:
            raise ModelError(f"tensor {node.name} has type {node.type}, which fer_edge cannot feed")
        return TensorMeta(node.name, np.dtype(dtype), tuple(d if isinstance(d, int) else None for d in node.shape))

    def get_input_metadata_impl(self):
        return self._input_meta

    def get_output_metadata_impl(self):
        return self._output_meta

    def infer_impl(self, feed):
        return dict(zip(self._output_names, self.session.run(self._output_names, feed)))

    def deactivate_impl(self):
        self.session = None

    def read_metadata(self):
        self._require_active("read_metadata()")
        return from_custom_map(self.session.get_modelmeta().custom_metadata_map, self.path)

    def describe(self):
        return {"backend": self.name, "providers": list(self.providers), "precision": None,
                "threads": self.threads}
