"""Native TensorRT backend (TensorRT 10 and 11): one engine, one execution context, pinned host buffers.

The flow follows TensorRT's name-based tensor API: ``Runtime.deserialize_cuda_engine``, then for every I/O
tensor ``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_dtype`` / ``get_tensor_shape``; buffers are
sized for the optimisation profile's largest batch and bound once with ``set_tensor_address``; each call
sets the batch with ``set_input_shape``, copies in on a CUDA stream, runs ``execute_async_v3`` and copies out.
CUDA comes from pycuda or cuda-python, whichever is installed (``pip install 'fer_edge[gpu]'``).

An engine only runs on the TensorRT version and GPU it was built for; the JSON file written beside it by
fer-export (``<engine>.json``) says which, and a mismatch is refused before TensorRT is asked.
"""

import contextlib
import ctypes
import json
import os

import numpy as np

from ..errors import FerEdgeError, MissingExtraError, ModelError, require
from ..faces import InputError
from ..metadata import ModelMetadata, engine_sidecar_path
from .base import BaseRunner, TensorMeta


def _tensorrt():
    return require("tensorrt", "gpu")


# -- compatibility -------------------------------------------------------------------------------------------
def load_sidecar(engine_path):
    """The JSON document beside an engine, or None when there is none.

    Raises:
        ModelError: the file exists but is not a JSON object.
    """
    path = engine_sidecar_path(engine_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the engine's JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: the engine's JSON must be an object")
    return data


def _version_tuple(text):
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def _capability(value):
    """'8.6', [8, 6], (8, 6) or 86 -> '8.6'; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        return f"{int(value[0])}.{int(value[1])}"
    if isinstance(value, int):
        return f"{value // 10}.{value % 10}"
    return str(value).strip()


def check_engine_compatibility(sidecar, tensorrt_version, gpu_name, compute_capability, source="engine"):
    """Refuse an engine built for another TensorRT version or GPU.

    Args:
        sidecar: the engine's JSON (None: nothing to check, TensorRT's deserialisation will tell).
        tensorrt_version: ``tensorrt.__version__`` here.
        gpu_name: this GPU's name.
        compute_capability: this GPU's (major, minor) or "major.minor".
        source: the engine path, for messages.

    Raises:
        ModelError: naming both sides of the mismatch and how to fix it.
    """
    if not sidecar:
        return
    built = sidecar.get("tensorrt_version")
    # Engines built with the version-compatible flag run on later TensorRT versions of the same major.
    if built and not sidecar.get("version_compatible"):
        if _version_tuple(built) != _version_tuple(tensorrt_version):
            raise ModelError(f"{source} was built with TensorRT {built}, but this machine has TensorRT "
                             f"{tensorrt_version}; rebuild the engine here with fer-export")
    elif built and _version_tuple(built)[0] != _version_tuple(tensorrt_version)[0]:
        raise ModelError(f"{source} was built with TensorRT {built} (version-compatible within "
                         f"{_version_tuple(built)[0]}.x), but this machine has TensorRT {tensorrt_version}")
    hardware = sidecar.get("hardware_compatibility")
    if hardware and str(hardware).lower() not in ("none", "false"):
        return
    want_cc, have_cc = _capability(sidecar.get("compute_capability")), _capability(compute_capability)
    want_gpu = (sidecar.get("gpu_name") or "").strip()
    if (want_cc and have_cc and want_cc != have_cc) or (want_gpu and gpu_name
                                                         and want_gpu.lower() != str(gpu_name).strip().lower()):
        raise ModelError(f"{source} was built for {want_gpu or 'another GPU'} (compute capability "
                         f"{want_cc or '?'}), but this GPU is {gpu_name} (compute capability {have_cc}); "
                         "rebuild the engine on this GPU with fer-export")


# -- CUDA through pycuda or cuda-python ----------------------------------------------------------------------
class PycudaApi:
    """The few CUDA calls the runner needs, through pycuda (primary context, pushed per call)."""

    name = "pycuda"

    def __init__(self, device=0):
        self.cuda = require("pycuda.driver", "gpu")
        try:
            self.cuda.init()
            self.device = self.cuda.Device(device)
            # TensorRT uses the CUDA runtime, which works in the primary context: share it instead of making one.
            self.context = self.device.retain_primary_context()
        except Exception as exc:  # pycuda raises its own types for a missing driver or device
            raise FerEdgeError(f"no usable CUDA device {device} (pycuda: {exc})") from None

    def device_name(self):
        return self.device.name()

    def compute_capability(self):
        return tuple(self.device.compute_capability())

    @contextlib.contextmanager
    def activated(self):
        # A CUDA context is bound to a thread; the video pipeline infers from a worker thread.
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def pinned(self, count, dtype):
        return self.cuda.pagelocked_empty(int(count), dtype)

    def free_pinned(self, array):
        array.base.free()

    def alloc(self, nbytes):
        mem = self.cuda.mem_alloc(max(int(nbytes), 1))
        return mem, int(mem)

    def free(self, handle):
        handle.free()

    def stream(self):
        stream = self.cuda.Stream()
        return stream, stream.handle

    def free_stream(self, stream):
        del stream

    def htod(self, device_ptr, host, stream):
        self.cuda.memcpy_htod_async(device_ptr, host, stream)

    def dtoh(self, host, device_ptr, stream):
        self.cuda.memcpy_dtoh_async(host, device_ptr, stream)

    def synchronize(self, stream):
        stream.synchronize()

    def close(self):
        self.context.detach()


class CudaPythonApi:
    """The same calls through NVIDIA's cuda-python runtime bindings."""

    name = "cuda-python"

    def __init__(self, device=0):
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart
            except ImportError as exc:
                raise MissingExtraError(f"neither pycuda nor cuda-python is installed: pip install "
                                        f"'fer_edge[gpu]' ({exc})") from None
        self.rt = cudart
        self.index = int(device)
        self._check(cudart.cudaSetDevice(self.index))
        self.props = self._check(cudart.cudaGetDeviceProperties(self.index))

    def _check(self, result):
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            raise FerEdgeError(f"CUDA error: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def device_name(self):
        name = self.props.name
        return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")

    def compute_capability(self):
        return int(self.props.major), int(self.props.minor)

    @contextlib.contextmanager
    def activated(self):
        # The runtime API binds the device per thread; setting it is cheap.
        self._check(self.rt.cudaSetDevice(self.index))
        yield

    def pinned(self, count, dtype):
        dtype = np.dtype(dtype)
        nbytes = max(int(count) * dtype.itemsize, 1)
        ptr = self._check(self.rt.cudaMallocHost(nbytes))
        raw = (ctypes.c_byte * nbytes).from_address(int(ptr))
        return np.frombuffer(raw, dtype=dtype, count=int(count))

    def free_pinned(self, array):
        self._check(self.rt.cudaFreeHost(array.ctypes.data))

    def alloc(self, nbytes):
        ptr = self._check(self.rt.cudaMalloc(max(int(nbytes), 1)))
        return ptr, int(ptr)

    def free(self, handle):
        self._check(self.rt.cudaFree(handle))

    def stream(self):
        stream = self._check(self.rt.cudaStreamCreate())
        return stream, int(stream)

    def free_stream(self, stream):
        self._check(self.rt.cudaStreamDestroy(stream))

    def htod(self, device_ptr, host, stream):
        self._check(self.rt.cudaMemcpyAsync(device_ptr, host.ctypes.data, host.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def dtoh(self, host, device_ptr, stream):
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, device_ptr, host.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def synchronize(self, stream):
        self._check(self.rt.cudaStreamSynchronize(stream))

    def close(self):
        pass


CUDA_APIS = {"pycuda": PycudaApi, "cuda-python": CudaPythonApi}


def cuda_api(choice=None, device=0):
    """Open CUDA through ``choice`` ("pycuda" or "cuda-python"), or the first of them that is installed."""
    if choice is not None:
        if choice not in CUDA_APIS:
            raise FerEdgeError(f"unknown CUDA binding {choice!r}: choose one of {', '.join(CUDA_APIS)}")
        return CUDA_APIS[choice](device)
    try:
        return PycudaApi(device)
    except MissingExtraError:
        return CudaPythonApi(device)


# -- the runner ----------------------------------------------------------------------------------------------
class TensorRTRunner(BaseRunner):
    """Runs a serialized TensorRT engine (.engine / .plan)."""

    name = "tensorrt"

    def __init__(self, path, device=0, cuda=None):
        """Args:
            path: the engine file; ``<path>.json`` beside it, when present, is checked and read for metadata.
            device: CUDA device index.
            cuda: "pycuda", "cuda-python" or None for whichever is installed.
        """
        super().__init__(path)
        self.device = int(device)
        self.cuda_choice = cuda
        self.sidecar = None
        self.api = None

    def activate_impl(self):
        if not os.path.isfile(self.path):
            raise ModelError(f"{self.path}: engine file not found")
        if os.path.getsize(self.path) == 0:
            raise ModelError(f"{self.path}: engine file is empty")
        self.sidecar = load_sidecar(self.path)
        trt = _tensorrt()
        self.api = cuda_api(self.cuda_choice, self.device)
        try:
            check_engine_compatibility(self.sidecar, trt.__version__, self.api.device_name(),
                                       self.api.compute_capability(), self.path)
            with self.api.activated():
                self._load(trt)
        except BaseException:
            self._release()
            raise

    def _load(self, trt):
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(self.path, "rb") as fh:
            blob = fh.read()
        self.engine = self._runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise ModelError(f"TensorRT {trt.__version__} could not deserialize {self.path}: not an engine, or built "
                             "by another TensorRT version or for another GPU (TensorRT's log above says which)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ModelError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)")
        self._in, self._out = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            try:
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            except TypeError:
                raise ModelError(f"{self.path}: tensor {name} has type {self.engine.get_tensor_dtype(name)}, which "
                                 "has no NumPy equivalent; export the engine with float32 or float16 I/O") from None
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            meta = TensorMeta(name, dtype, tuple(None if d < 0 else d for d in shape))
            (self._in if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self._out).append(meta)
        if not self._in or not self._out:
            raise ModelError(f"{self.path}: an engine needs inputs and outputs")
        # Size every buffer for the profile's largest shapes, found by setting them on the context.
        self._max_batch, self._min_batch = None, 1
        for meta in self._in:
            if None in meta.shape:
                low, _, largest = (tuple(int(d) for d in dims)
                                   for dims in self.engine.get_tensor_profile_shape(meta.name, 0))
            else:
                low = largest = meta.shape
            self._set_shape(meta.name, largest)
            self._max_batch = largest[0] if self._max_batch is None else min(self._max_batch, largest[0])
            # A DLA or fixed-batch engine takes no smaller batch: smaller ones are padded up to this.
            self._min_batch = max(self._min_batch, low[0])
        self._host, self._dev, self._dev_ptr = {}, {}, {}
        for meta in self._in + self._out:
            count = int(np.prod(tuple(self.context.get_tensor_shape(meta.name))))
            self._host[meta.name] = self.api.pinned(count, meta.dtype)
            self._dev[meta.name], self._dev_ptr[meta.name] = self.api.alloc(count * meta.dtype.itemsize)
            # The buffers never move, so binding them once serves every later call.
            if not self.context.set_tensor_address(meta.name, self._dev_ptr[meta.name]):
                raise ModelError(f"TensorRT refused the buffer for tensor {meta.name} of {self.path}")
        self._stream, self._stream_handle = self.api.stream()
        self._shapes = {}

    def _set_shape(self, name, shape):
        if not self.context.set_input_shape(name, tuple(shape)):
            raise InputError(f"{self.path}: input {name} cannot take shape {tuple(shape)} (outside the engine's "
                             "optimisation profile)")

    def get_input_metadata_impl(self):
        return self._in

    def get_output_metadata_impl(self):
        return self._out

    @property
    def max_batch(self):
        return self._max_batch if self.is_active else None

    def infer_impl(self, feed):
        n = None
        with self.api.activated():
            for meta in self._in:
                arr = feed[meta.name]
                n = arr.shape[0]
                shape = (max(n, self._min_batch),) + arr.shape[1:]
                if self._shapes.get(meta.name) != shape:
                    self._set_shape(meta.name, shape)
                    self._shapes[meta.name] = shape
                host = self._host[meta.name][:int(np.prod(shape))].reshape(shape)
                np.copyto(host[:n], arr, casting="same_kind")
                host[n:] = 0
                self.api.htod(self._dev_ptr[meta.name], host, self._stream)
            if not self.context.execute_async_v3(self._stream_handle):
                raise FerEdgeError(f"TensorRT failed to run {self.path} (see TensorRT's log)")
            views = {}
            for meta in self._out:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(meta.name))
                views[meta.name] = self._host[meta.name][:int(np.prod(shape))].reshape(shape)
                self.api.dtoh(views[meta.name], self._dev_ptr[meta.name], self._stream)
            self.api.synchronize(self._stream)
        # Copies, because the pinned buffers are overwritten by the next call; padding rows are dropped.
        return {name: view[:n].copy() for name, view in views.items()}

    def _release(self):
        api, self.api = self.api, None
        if api is None:
            return
        try:
            with api.activated():
                for arr in getattr(self, "_host", {}).values():
                    api.free_pinned(arr)
                for handle in getattr(self, "_dev", {}).values():
                    api.free(handle)
                if getattr(self, "_stream", None) is not None:
                    api.free_stream(self._stream)
                # The context must go before the engine, and the engine before the runtime.
                self.context = self.engine = self._runtime = None
                self._host, self._dev, self._stream = {}, {}, None
        finally:
            api.close()

    def deactivate_impl(self):
        self._release()

    def read_metadata(self):
        data = (self.sidecar or {}).get("metadata")
        return None if data is None else ModelMetadata.from_dict(data, engine_sidecar_path(self.path))

    def describe(self):
        side = self.sidecar or {}
        return {"backend": self.name, "providers": [f"TensorRT ({self.api.name if self.api else '?'})"],
                "precision": side.get("precision"), "gpu": self.api.device_name() if self.api else None,
                "tensorrt_version": side.get("tensorrt_version"), "max_batch": self.max_batch}
