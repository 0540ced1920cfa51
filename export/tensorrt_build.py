"""TensorRT engines from the exported ONNX files, for TensorRT 10 (JetPack 6) and TensorRT 11.

The build is a chain of small steps, each testable with a stand-in ``tensorrt`` module (the Polygraphy
``backend/trt/loader.py`` shape): ``plan_build`` decides, from the TensorRT major version, the precision
and the DLA core, which ONNX file feeds the parser and which flags are set; ``network_from_onnx`` parses;
``create_config`` sets the profile, workspace, flags, calibrator, DLA and timing cache;
``engine_from_network`` builds; ``save_engine`` writes the engine and the JSON file beside it.

The two versions differ in where precision comes from:

* TensorRT 10 (weak typing): FP16 through ``BuilderFlag.FP16`` on the FP32 network; INT8 on the GPU
  through the Q/DQ ONNX (explicit quantization, ``BuilderFlag.INT8``); INT8 on a DLA core through
  implicit calibration of the FP32 network with an ``IInt8EntropyCalibrator2`` (the calibrator DLA
  requires), FP16 allowed for the layers left without scales.
* TensorRT 11 removed the FP16/INT8 builder flags and implicit calibration: networks are created
  ``STRONGLY_TYPED`` and the tensor types of the ONNX file decide: the FP16 ONNX for FP16, the Q/DQ
  ONNX for INT8.

DLA cores take no dynamic shapes, so a DLA engine's profile is fixed at the optimum batch.
"""

import dataclasses
import json
import os
import shutil
import subprocess

from fer_edge.errors import FerEdgeError, ModelError, require

DEFAULT_PROFILE = (1, 64, 256)
DEFAULT_WORKSPACE_MIB = 1024
PRECISIONS = ("fp32", "fp16", "int8")


class NoGpuError(FerEdgeError, RuntimeError):
    """No CUDA GPU can be used to build a TensorRT engine."""


def import_tensorrt():
    """The tensorrt module, or MissingExtraError naming the ``gpu`` extra."""
    return require("tensorrt", "gpu")


def trt_major(trt):
    """Major version of a tensorrt module (``trt.__version__`` such as ``10.3.0``)."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        raise ModelError(f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}") from None


@dataclasses.dataclass
class BuildPlan:
    """What an engine build does, decided before touching TensorRT.

    Attributes:
        trt_major: TensorRT major version.
        precision: ``fp32``, ``fp16`` or ``int8``.
        onnx: which ONNX file feeds the parser: ``fp32``, ``fp16`` or ``int8`` (the Q/DQ model).
        strongly_typed: create the network with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``.
        flags: names of the ``trt.BuilderFlag`` members to set.
        calibrate: implicit INT8 calibration through an ``IInt8EntropyCalibrator2``.
        dla_core: DLA core, or None for the GPU.
        quantization: how INT8 scales reach the engine (for the sidecar), or None.
    """

    trt_major: int
    precision: str
    onnx: str
    strongly_typed: bool
    flags: tuple
    calibrate: bool
    dla_core: object = None
    quantization: object = None


def plan_build(major, precision, dla_core=None, fp16_fallback=False):
    """Decide how to build an engine.

    Args:
        major: TensorRT major version (10 or newer).
        precision: ``fp32``, ``fp16`` or ``int8``.
        dla_core: DLA core index, or None for the GPU.
        fp16_fallback: for TensorRT 10 INT8 on the GPU, also let the layers outside Q/DQ run in FP16.

    Returns:
        A BuildPlan.

    Raises:
        ModelError: an unsupported version or combination.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"unknown engine precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if major < 10:
        raise ModelError(f"TensorRT {major} is too old: fer_edge builds engines with TensorRT 10 or 11")
    if dla_core is not None and precision == "fp32":
        raise ModelError("DLA cores run FP16 or INT8 only: add --fp16 or --int8 to build for --dla-core")
    fallback = ("GPU_FALLBACK",) if dla_core is not None else ()
    if major >= 11:
        quant = "explicit Q/DQ (tensorrt flavour ONNX)" if precision == "int8" else None
        return BuildPlan(major, precision, precision, True, fallback, False, dla_core, quant)
    if precision == "fp32":
        return BuildPlan(major, precision, "fp32", False, fallback, False, dla_core)
    if precision == "fp16":
        return BuildPlan(major, precision, "fp32", False, ("FP16",) + fallback, False, dla_core)
    if dla_core is not None:
        # DLA on TensorRT 10 takes INT8 through calibration; FP16 keeps scale-less layers on the DLA.
        return BuildPlan(major, precision, "fp32", False, ("INT8", "FP16") + fallback, True, dla_core,
                         "implicit (IInt8EntropyCalibrator2 on the FP32 network)")
    flags = ("INT8", "FP16") if fp16_fallback else ("INT8",)
    return BuildPlan(major, precision, "int8", False, flags, False, None, "explicit Q/DQ (tensorrt flavour ONNX)")


def resolve_profile(profile, dla_core=None):
    """(min, opt, max) batch sizes; DLA takes no dynamic shapes, so its profile is (opt, opt, opt)."""
    lo, opt, hi = (int(v) for v in profile)
    if not 1 <= lo <= opt <= hi:
        raise ModelError(f"the batch profile needs 1 <= min <= opt <= max, got {lo},{opt},{hi}")
    return (opt, opt, opt) if dla_core is not None else (lo, opt, hi)


# ---------------------------------------------------------------------------------------------
# The chain


def create_builder(trt, logger=None):
    """(builder, logger); the logger prints TensorRT's warnings and errors."""
    logger = logger or trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise NoGpuError("TensorRT could not create a builder (no usable CUDA GPU or driver)")
    return builder, logger


def network_from_onnx(trt, builder, logger, onnx_bytes, strongly_typed):
    """Parse an ONNX model into a TensorRT network.

    Args:
        trt: the tensorrt module.
        builder: a trt.Builder.
        logger: its trt.Logger.
        onnx_bytes: the serialized ONNX model.
        strongly_typed: create the network STRONGLY_TYPED (TensorRT 11; optional in 10).

    Returns:
        (network, parser); keep the parser alive as long as the network, which refers to its weights.
    """
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    # No EXPLICIT_BATCH: deprecated in TensorRT 10, where explicit batch is the only mode, and gone in 11.
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"TensorRT cannot parse the ONNX model: {errors[0] if errors else 'unknown error'}")
    return network, parser


def create_config(trt, builder, network, plan, profile, workspace_bytes, timing_cache=b"", calibrator=None,
                  log=None):
    """The builder configuration of a plan.

    Args:
        trt: the tensorrt module.
        builder: a trt.Builder.
        network: the parsed network (its first input gets the batch profile).
        plan: a BuildPlan.
        profile: (min, opt, max) batch sizes (see ``resolve_profile``).
        workspace_bytes: workspace memory pool limit.
        timing_cache: serialized timing cache to start from (b"" for an empty one).
        calibrator: an INT8 calibrator, required when ``plan.calibrate``.
        log: callable for notes, or None.

    Returns:
        trt.IBuilderConfig.
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    tensor = network.get_input(0)
    chw = tuple(int(d) for d in tuple(tensor.shape)[1:])
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(tensor.name, (profile[0],) + chw, (profile[1],) + chw, (profile[2],) + chw)
    config.add_optimization_profile(opt_profile)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.calibrate:
        if calibrator is None:
            raise ModelError("implicit INT8 calibration needs calibration images (--calib)")
        config.int8_calibrator = calibrator
        # Calibration runs at one fixed shape: the calibrator's batch.
        batch = int(calibrator.get_batch_size())
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(tensor.name, (batch,) + chw, (batch,) + chw, (batch,) + chw)
        config.set_calibration_profile(calib_profile)
    if plan.dla_core is not None:
        available = int(getattr(builder, "num_DLA_cores", 0))
        if plan.dla_core >= available:
            raise NoGpuError(f"--dla-core {plan.dla_core} asked for, but this device has {available} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan.dla_core)
    cache = None
    if timing_cache:
        try:
            cache = config.create_timing_cache(timing_cache)
        except Exception:  # a cache from another TensorRT version or GPU: start afresh
            cache = None
        if cache is None and log:
            log("timing cache unreadable by this TensorRT/GPU; starting an empty one")
    if cache is None:
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return config


def engine_from_network(builder, network, config):
    """Build and serialize the engine; bytes of the plan."""
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError("TensorRT failed to build the engine (its log above says why)")
    return bytes(serialized)


def serialized_timing_cache(config):
    """The timing cache of a config after a build, as bytes."""
    return bytes(config.get_timing_cache().serialize())


def save_engine(engine_bytes, path, sidecar):
    """Write the engine and, beside it, its JSON description (both atomically).

    Args:
        engine_bytes: the serialized engine.
        path: the engine file.
        sidecar: dict written to ``fer_edge.metadata.engine_sidecar_path(path)``.

    Returns:
        The sidecar path.
    """
    from fer_edge.io_utils import atomic_write_bytes, atomic_write_text
    from fer_edge.metadata import engine_sidecar_path

    side = engine_sidecar_path(path)
    atomic_write_bytes(path, engine_bytes)
    atomic_write_text(side, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return side


def engine_sidecar(trt, gpu, plan, profile, metadata, onnx_name):
    """The JSON document beside an engine: what it was built with and for, and the model metadata.

    The runtime reads it to preprocess and to refuse an engine built for another GPU or TensorRT version.
    """
    meta = metadata.replace(precision=plan.precision)
    return {
        "tensorrt_version": str(trt.__version__),
        "gpu_name": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "precision": plan.precision,
        "quantization": plan.quantization,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.flags),
        "profile": {"min": profile[0], "opt": profile[1], "max": profile[2]},
        "dla_core": plan.dla_core,
        "built_from": onnx_name,
        "input": "input",
        "metadata": meta.to_dict(),
    }


# ---------------------------------------------------------------------------------------------
# The calibrator and its device memory


class _DeviceBuffer:
    """Device memory for calibration batches: pycuda (the ``gpu`` extra) in the primary context, else torch."""

    def __init__(self):
        self._pycuda = self._ctx = self._mem = self._torch = None
        self._size = 0
        try:
            import pycuda.driver as cuda

            cuda.init()
            # The primary context is the one TensorRT's runtime calls use; a pycuda.autoinit context is not.
            self._ctx = cuda.Device(0).retain_primary_context()
            self._ctx.push()
            self._pycuda = cuda
        except ImportError:
            self._torch = require("torch", "gpu")

    def upload(self, array):
        """Copy a contiguous host array to the device; returns the device pointer as an int."""
        if self._pycuda is not None:
            if self._mem is None or array.nbytes > self._size:
                self._mem = self._pycuda.mem_alloc(array.nbytes)
                self._size = array.nbytes
            self._pycuda.memcpy_htod(self._mem, array)
            return int(self._mem)
        self._mem = self._torch.from_numpy(array).cuda()
        self._torch.cuda.synchronize()
        return int(self._mem.data_ptr())

    def free(self):
        """Release the memory (and the pushed context)."""
        if self._pycuda is not None:
            if self._mem is not None:
                self._mem.free()
            self._ctx.pop()
            self._pycuda = None
        self._mem = None


def make_calibrator(trt, batches, cache_path, device=None):
    """An ``IInt8EntropyCalibrator2`` fed with the export's calibration batches.

    Args:
        trt: the tensorrt module.
        batches: list of float32 arrays of one shape (the same batches ONNX Runtime calibrated with).
        cache_path: calibration cache file: read when it exists (no calibration then), written after one.
        device: object with ``upload(array) -> int pointer`` and ``free()``; default CUDA memory.

    Returns:
        The calibrator instance (``batches_fed`` counts the batches TensorRT took).
    """
    from fer_edge.io_utils import atomic_write_bytes

    base = trt.IInt8EntropyCalibrator2

    class EntropyCalibrator(base):
        def __init__(self):
            # pybind11 trampolines need the base initialised explicitly.
            base.__init__(self)
            self.batches = list(batches)
            self.cache_path = os.fspath(cache_path)
            self.batches_fed = 0
            self._device = device
            self._it = iter(self.batches)

        def get_batch_size(self):
            return int(self.batches[0].shape[0])

        def get_batch(self, names, *unused):
            batch = next(self._it, None)
            if batch is None:
                if self._device is not None:
                    self._device.free()
                return None
            if self._device is None:
                self._device = _DeviceBuffer()
            self.batches_fed += 1
            return [self._device.upload(batch)] * len(names)

        def read_calibration_cache(self, *unused):
            if os.path.isfile(self.cache_path) and os.path.getsize(self.cache_path):
                with open(self.cache_path, "rb") as fh:
                    return fh.read()
            return None

        def write_calibration_cache(self, cache):
            atomic_write_bytes(self.cache_path, bytes(cache))

    return EntropyCalibrator()


# ---------------------------------------------------------------------------------------------
# GPU discovery


def gpu_info():
    """Name and compute capability of GPU 0.

    Returns:
        dict with ``name`` and ``compute_capability`` (such as "8.7").

    Raises:
        NoGpuError: no CUDA GPU could be found.
    """
    reasons = []
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() > 0:
            dev = cuda.Device(0)
            major, minor = dev.compute_capability()
            return {"name": dev.name(), "compute_capability": f"{major}.{minor}"}
        reasons.append("pycuda sees no device")
    except ImportError:
        reasons.append("pycuda not installed")
    except Exception as exc:  # pycuda.driver.Error: no driver, no device
        reasons.append(f"pycuda: {exc}")
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
        reasons.append("torch sees no CUDA device")
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
            if "," in line:
                name, cap = (s.strip() for s in line.rsplit(",", 1))
                return {"name": name, "compute_capability": cap}
        except (OSError, subprocess.SubprocessError):
            pass
        reasons.append("nvidia-smi lists no GPU")
    else:
        reasons.append("no nvidia-smi")
    raise NoGpuError(f"no CUDA GPU to build a TensorRT engine on ({'; '.join(reasons)})")


def preflight():
    """Fail early, before any export work, when an engine cannot be built here.

    Returns:
        (tensorrt module, gpu info dict).
    """
    trt = import_tensorrt()
    trt_major(trt)
    return trt, gpu_info()


# ---------------------------------------------------------------------------------------------
# The whole build


def build_engine(trt, gpu, plan, onnx_bytes, onnx_name, metadata, engine_path, profile=DEFAULT_PROFILE,
                 workspace_mib=DEFAULT_WORKSPACE_MIB, timing_cache_path=None, calibrator=None, log=print):
    """Build one engine and write it, its sidecar JSON and the timing cache.

    Args:
        trt: the tensorrt module.
        gpu: dict from ``gpu_info``.
        plan: a BuildPlan.
        onnx_bytes: the ONNX model the plan names.
        onnx_name: its file name (recorded in the sidecar).
        metadata: the model's ModelMetadata.
        engine_path: the engine file.
        profile: (min, opt, max) batch sizes (already resolved for DLA).
        workspace_mib: workspace limit in MiB.
        timing_cache_path: timing cache file, read if present and rewritten after the build; None: none.
        calibrator: INT8 calibrator, for plans that calibrate.
        log: callable for progress lines.

    Returns:
        The sidecar dict.
    """
    from fer_edge.io_utils import atomic_write_bytes

    builder, logger = create_builder(trt)
    network, parser = network_from_onnx(trt, builder, logger, onnx_bytes, plan.strongly_typed)
    cache_bytes = b""
    if timing_cache_path and os.path.isfile(timing_cache_path):
        with open(timing_cache_path, "rb") as fh:
            cache_bytes = fh.read()
    config = create_config(trt, builder, network, plan, profile, workspace_mib << 20, cache_bytes, calibrator, log)
    engine = engine_from_network(builder, network, config)
    del parser
    if timing_cache_path:
        atomic_write_bytes(timing_cache_path, serialized_timing_cache(config))
    sidecar = engine_sidecar(trt, gpu, plan, profile, metadata, onnx_name)
    save_engine(engine, engine_path, sidecar)
    return sidecar


def write_calibration_cache(trt, onnx_fp32_bytes, batches, cache_path, profile=DEFAULT_PROFILE,
                            workspace_mib=DEFAULT_WORKSPACE_MIB, calibrator=None):
    """Run TensorRT 10's implicit INT8 calibration on the FP32 network only to write the calibration cache.

    DLA users on TensorRT 10 build their engines with this cache (trtexec --calib=...; fer-export
    --dla-core reads it back instead of calibrating again). The engine built on the way is discarded.

    Args:
        trt: the tensorrt module (major version 10).
        onnx_fp32_bytes: the FP32 ONNX model.
        batches: the calibration batches (the same ONNX Runtime used).
        cache_path: the cache file to write.
        profile: (min, opt, max) batch sizes of the throw-away engine.
        workspace_mib: workspace limit in MiB.
        calibrator: a calibrator to use instead of ``make_calibrator`` (tests).

    Returns:
        The number of batches TensorRT calibrated on.
    """
    from fer_edge.io_utils import atomic_output

    plan = BuildPlan(trt_major(trt), "int8", "fp32", False, ("INT8",), True, None, "implicit")
    if plan.trt_major >= 11:
        raise ModelError("TensorRT 11 has no implicit INT8 calibration; its engines take the Q/DQ ONNX")
    # Calibrate into an empty temporary file: an old cache at cache_path must not be read back as the result.
    with atomic_output(cache_path) as tmp:
        calibrator = calibrator or make_calibrator(trt, batches, tmp)
        builder, logger = create_builder(trt)
        network, parser = network_from_onnx(trt, builder, logger, onnx_fp32_bytes, False)
        config = create_config(trt, builder, network, plan, profile, workspace_mib << 20, b"", calibrator)
        engine_from_network(builder, network, config)
        del parser
        if not os.path.getsize(tmp):
            raise ModelError(f"TensorRT calibrated but wrote no calibration cache for {cache_path}")
    return calibrator.batches_fed
