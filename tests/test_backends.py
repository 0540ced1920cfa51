"""The backends' shared interface, ONNX Runtime provider choice, and the TensorRT runner's logic.

TensorRT and CUDA cannot be installed on the CI machines, so the TensorRT runner is driven here through
fakes that follow TensorRT 10/11's Python API (name-based tensors, set_input_shape, set_tensor_address,
execute_async_v3) and record every CUDA call; ``test_real_engine_matches_onnxruntime`` (marker ``gpu``)
runs a real engine when TensorRT, a CUDA binding and a GPU are present.
"""

import json
import types

import numpy as np
import pytest

from fer_edge import Runtime
from fer_edge.backends import BACKENDS, OnnxrtRunner, TensorRTRunner, backend_for, create_runner
from fer_edge.backends import onnxrt, tensorrt as trt_backend
from fer_edge.errors import FerEdgeError, MissingExtraError, ModelError
from fer_edge.faces import InputError
from fer_edge.metadata import ModelMetadata
from fer_edge.models import default_model_path
from tests.test_runtime_support import expected_probs, make_linear_onnx

pytest.importorskip("onnx")


# -- registry and the shared interface -----------------------------------------------------------------------
def test_backend_registry_and_choice(tmp_path):
    assert set(BACKENDS) == {"onnxruntime", "tensorrt"}
    assert backend_for("m.onnx") == "onnxruntime"
    assert backend_for("m.engine") == backend_for("m.PLAN") == "tensorrt"
    with pytest.raises(FerEdgeError, match="unknown backend"):
        backend_for("m.onnx", "tflite")
    with pytest.raises(ModelError, match="cannot run it"):
        backend_for("m.engine", "onnxruntime")
    with pytest.raises(FerEdgeError, match="providers apply to ONNX Runtime"):
        create_runner("m.engine", providers=["CPUExecutionProvider"])


def test_onnxrt_runner_interface(tmp_path):
    path = tmp_path / "lin.onnx"
    w, b = make_linear_onnx(path)
    runner = OnnxrtRunner(path, threads=1)
    assert not runner.is_active and runner.last_inference_time() is None
    with pytest.raises(FerEdgeError, match="activate"):
        runner.infer({"input": np.zeros((1, 1, 40, 40), np.float32)})
    with runner:
        assert runner.is_active
        (inp,) = runner.get_input_metadata()
        assert inp.name == "input" and inp.shape == (None, 1, 40, 40) and inp.dtype == np.float32
        assert "?" in inp.describe()
        assert runner.get_output_metadata()[0].name == "logits"
        x = np.random.default_rng(0).standard_normal((3, 1, 40, 40)).astype(np.float32)
        out = runner.infer({"input": x})
        np.testing.assert_allclose(out["logits"], x.reshape(3, -1) @ w + b, rtol=1e-4, atol=1e-4)
        assert runner.last_inference_time() > 0
        assert runner.describe()["providers"] == ["CPUExecutionProvider"]
        assert runner.read_metadata().architecture == "linear-test"
        with pytest.raises(InputError, match="inputs"):
            runner.infer({"x": x})
        with pytest.raises(InputError, match="float32"):
            runner.infer({"input": x.astype(np.float64)})
        with pytest.raises(InputError, match="shape"):
            runner.infer({"input": x[:, :, :20]})
    assert not runner.is_active


def test_choose_providers():
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxrt.choose_providers(None, avail) == avail
    assert onnxrt.choose_providers(None, ["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert onnxrt.choose_providers("CPUExecutionProvider", avail) == ["CPUExecutionProvider"]
    with pytest.raises(FerEdgeError, match="not available"):
        onnxrt.choose_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"])


def test_provider_that_silently_falls_back_is_reported(monkeypatch, tmp_path):
    """onnxruntime-gpu without CUDA lists CUDA but loads CPU: an explicit request must fail, auto must tell."""
    import onnxruntime

    path = tmp_path / "lin.onnx"
    make_linear_onnx(path)
    real = onnxruntime.InferenceSession

    class FallingBack(real):
        def __init__(self, model, options=None, providers=None, **kw):
            super().__init__(model, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", FallingBack)
    with pytest.raises(FerEdgeError, match="could not load CUDAExecutionProvider"):
        Runtime(path, providers=["CUDAExecutionProvider"])
    with Runtime(path) as r:
        assert r.info()["providers"] == ["CPUExecutionProvider"]


def test_tensorrt_provider_gets_cache_and_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_EDGE_CACHE", str(tmp_path / "cache"))
    runner = OnnxrtRunner(default_model_path(), profile_batch=16)
    import onnxruntime

    opts = runner._provider_options(onnxruntime, ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    name, o = opts[0]
    assert name == "TensorrtExecutionProvider" and o["trt_engine_cache_enable"] == "True"
    assert o["trt_profile_opt_shapes"] == "input:16x1x40x40" and o["trt_profile_max_shapes"] == "input:64x1x40x40"
    assert o["trt_engine_cache_path"].startswith(str(tmp_path))


# -- TensorRT through fakes ----------------------------------------------------------------------------------
class FakeCuda:
    """Records CUDA calls; device memory is a dict of byte arrays keyed by fake pointers."""

    name = "fake-cuda"

    def __init__(self, gpu="NVIDIA Test GPU", cc=(8, 9)):
        self.gpu, self.cc = gpu, cc
        self.mem, self.next_ptr, self.calls, self.active = {}, 0x1000, [], 0
        self.pinned_live, self.device_live, self.closed = 0, 0, False

    def device_name(self):
        return self.gpu

    def compute_capability(self):
        return self.cc

    def activated(self):
        cuda = self

        class _Ctx:
            def __enter__(self):
                cuda.active += 1

            def __exit__(self, *a):
                cuda.active -= 1
        return _Ctx()

    def pinned(self, count, dtype):
        self.pinned_live += 1
        return np.zeros(int(count), dtype)

    def free_pinned(self, array):
        self.pinned_live -= 1

    def alloc(self, nbytes):
        ptr = self.next_ptr
        self.next_ptr += 0x100000
        self.mem[ptr] = np.zeros(int(nbytes), np.uint8)
        self.device_live += 1
        return ptr, ptr

    def free(self, handle):
        del self.mem[handle]
        self.device_live -= 1

    def stream(self):
        return "stream", 77

    def free_stream(self, stream):
        self.calls.append("free_stream")

    def htod(self, device_ptr, host, stream):
        assert self.active, "CUDA call outside the pushed context"
        raw = np.ascontiguousarray(host).view(np.uint8).ravel()
        self.mem[device_ptr][:raw.size] = raw
        self.calls.append("htod")

    def dtoh(self, host, device_ptr, stream):
        assert self.active
        host.view(np.uint8).ravel()[:] = self.mem[device_ptr][:host.nbytes]
        self.calls.append("dtoh")

    def synchronize(self, stream):
        self.calls.append("sync")

    def close(self):
        self.closed = True


class FakeContext:
    """IExecutionContext: logits[i, c] = (c + 1) * mean(x[i]) computed from 'device memory'."""

    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.executed = engine, {}, {}, []

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile
        if not lo[0] <= shape[0] <= hi[0] or tuple(shape[1:]) != tuple(hi[1:]):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        n = self.shapes["input"][0]
        return self.shapes["input"] if name == "input" else (n, 7)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        assert stream_handle == 77 and set(self.addresses) == {"input", "logits"}
        cuda = self.engine.cuda
        shape = self.shapes["input"]
        x = cuda.mem[self.addresses["input"]].view(np.float32)[:int(np.prod(shape))].reshape(shape)
        logits = x.reshape(shape[0], -1).mean(1, dtype=np.float64)[:, None] * np.arange(1, 8)
        raw = logits.astype(np.float32).view(np.uint8).ravel()
        cuda.mem[self.addresses["logits"]][:raw.size] = raw
        self.executed.append(shape[0])
        return True


class FakeEngine:
    def __init__(self, cuda, profile=None):
        self.cuda, self.num_io_tensors = cuda, 2
        self.profile = profile or [(1, 1, 40, 40), (8, 1, 40, 40), (16, 1, 40, 40)]
        self.contexts = []

    def get_tensor_name(self, i):
        return ("input", "logits")[i]

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if name == "input" else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return FakeTrt.DataType.FLOAT

    def get_tensor_shape(self, name):
        return (-1, 1, 40, 40) if name == "input" else (-1, 7)

    def get_tensor_profile_shape(self, name, profile):
        assert name == "input" and profile == 0
        return self.profile

    def create_execution_context(self):
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


class FakeTrt(types.SimpleNamespace):
    """The slice of the tensorrt module the runner uses."""

    __version__ = "10.3.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        FLOAT = "FLOAT"

    @staticmethod
    def nptype(dt):
        if dt != "FLOAT":
            raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype: {dt}")
        return np.float32

    def __init__(self, cuda, version="10.3.0"):
        super().__init__()
        self.cuda, self.__version__ = cuda, version
        outer = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, blob):
                if not blob.startswith(b"FAKE-ENGINE"):
                    return None
                outer.engine = FakeEngine(outer.cuda, getattr(outer, "profile", None))
                return outer.engine
        self.Runtime = Runtime


def _sidecar(**changes):
    data = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA Test GPU", "compute_capability": "8.9",
            "precision": "fp16", "profile": {"min": [1, 1, 40, 40], "opt": [8, 1, 40, 40], "max": [16, 1, 40, 40]},
            "dla_core": None, "metadata": ModelMetadata(architecture="fake-engine").to_dict()}
    data.update(changes)
    return data


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    cuda = FakeCuda()
    trt = FakeTrt(cuda)
    monkeypatch.setattr(trt_backend, "_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "cuda_api", lambda choice=None, device=0: cuda)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"FAKE-ENGINE" + b"\0" * 64)
    (tmp_path / "model.engine.json").write_text(json.dumps(_sidecar()))
    return types.SimpleNamespace(cuda=cuda, trt=trt, engine=engine, sidecar=tmp_path / "model.engine.json")


def test_tensorrt_runner_flow(fake_trt):
    cuda = fake_trt.cuda
    with TensorRTRunner(fake_trt.engine) as runner:
        (inp,) = runner.get_input_metadata()
        assert inp.shape == (None, 1, 40, 40) and runner.max_batch == 16
        ctx = fake_trt.trt.engine.contexts
        assert len(ctx) == 1  # one execution context
        for n in (3, 16, 5):
            x = np.random.default_rng(n).standard_normal((n, 1, 40, 40)).astype(np.float32)
            out = runner.infer({"input": x})["logits"]
            assert out.shape == (n, 7)
            np.testing.assert_allclose(out, x.reshape(n, -1).mean(1)[:, None] * np.arange(1, 8), rtol=1e-5,
                                       atol=1e-6)
        assert ctx[0].executed == [3, 16, 5]
        assert cuda.calls.count("sync") == 3 and cuda.calls.count("htod") == 3 and cuda.active == 0
        with pytest.raises(InputError, match="maximum 16"):
            runner.infer({"input": np.zeros((17, 1, 40, 40), np.float32)})
        d = runner.describe()
        assert d["backend"] == "tensorrt" and d["precision"] == "fp16" and d["max_batch"] == 16
        assert runner.read_metadata().architecture == "fake-engine"
    assert cuda.pinned_live == 0 and cuda.device_live == 0 and cuda.closed


def test_fixed_batch_engine_pads_small_batches(fake_trt):
    """DLA engines are built with min = opt = max: fewer faces are padded up to the profile's batch."""
    fake_trt.trt.profile = [(8, 1, 40, 40)] * 3
    with TensorRTRunner(fake_trt.engine) as runner:
        x = np.random.default_rng(1).standard_normal((3, 1, 40, 40)).astype(np.float32)
        out = runner.infer({"input": x})["logits"]
        assert out.shape == (3, 7) and fake_trt.trt.engine.contexts[0].executed == [8]
        np.testing.assert_allclose(out, x.reshape(3, -1).mean(1)[:, None] * np.arange(1, 8), rtol=1e-5, atol=1e-6)


def test_runtime_on_engine_splits_batches(fake_trt):
    faces = np.random.default_rng(0).integers(0, 256, (40, 48, 48), dtype=np.uint8)
    with Runtime(fake_trt.engine, tta="flip", batch_size=64) as r:
        info = r.info()
        assert info["backend"] == "tensorrt" and info["precision"] == "fp16"
        p = r.predict_faces(faces)
        x = (faces[:, 4:44, 4:44].astype(np.float64) / 255 - 0.5) / 0.5
        logits = x.reshape(40, -1).mean(1)[:, None] * np.arange(1, 8)  # a mirror image has the same mean
        e = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), atol=1e-5)
        assert max(fake_trt.trt.engine.contexts[0].executed) <= 16  # 80 rows went in chunks of the profile max


@pytest.mark.parametrize("changes, match", [
    ({"tensorrt_version": "10.1.0"}, "built with TensorRT 10.1.0, but this machine has TensorRT 10.3.0"),
    ({"tensorrt_version": "11.0.0"}, "TensorRT 11.0.0"),
    ({"gpu_name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}, "built for NVIDIA A100"),
    ({"gpu_name": "NVIDIA Other GPU"}, "this GPU is NVIDIA Test GPU"),
    ({"compute_capability": [9, 0]}, "compute capability 9.0"),
])
def test_engine_for_another_gpu_or_version_is_refused(fake_trt, changes, match):
    fake_trt.sidecar.write_text(json.dumps(_sidecar(**changes)))
    with pytest.raises(ModelError, match=match):
        Runtime(fake_trt.engine)
    assert fake_trt.cuda.closed  # nothing left allocated


def test_compatibility_flags():
    check = trt_backend.check_engine_compatibility
    check(_sidecar(tensorrt_version="10.1.0", version_compatible=True), "10.3.0", "NVIDIA Test GPU", (8, 9))
    with pytest.raises(ModelError, match="version-compatible"):
        check(_sidecar(tensorrt_version="10.1.0", version_compatible=True), "11.0.0", "NVIDIA Test GPU", (8, 9))
    check(_sidecar(gpu_name="NVIDIA A100", compute_capability="8.0", hardware_compatibility="ampere_plus"),
          "10.3.0", "NVIDIA Test GPU", (8, 9))
    check(None, "10.3.0", "x", (1, 0))
    assert trt_backend._capability(86) == trt_backend._capability((8, 6)) == "8.6"
    assert trt_backend._version_tuple("10.3.0.26") == (10, 3, 0)


def test_engine_with_io_type_numpy_lacks(fake_trt, monkeypatch):
    monkeypatch.setattr(FakeEngine, "get_tensor_dtype", lambda self, name: "BF16")
    with pytest.raises(ModelError, match="no NumPy equivalent"):
        Runtime(fake_trt.engine)
    assert fake_trt.cuda.closed


def test_engine_that_does_not_deserialize(fake_trt):
    fake_trt.engine.write_bytes(b"garbage" * 10)
    with pytest.raises(ModelError, match="could not deserialize"):
        Runtime(fake_trt.engine)


def test_engine_without_metadata(fake_trt):
    fake_trt.sidecar.unlink()
    with pytest.raises(ModelError, match="no fer_edge metadata"):
        Runtime(fake_trt.engine)
    with Runtime(fake_trt.engine, metadata=ModelMetadata()) as r:
        assert r.predict_faces(np.zeros((2, 48, 48), np.uint8)).shape == (2, 7)
    fake_trt.sidecar.write_text("{not json")
    with pytest.raises(ModelError, match="JSON"):
        Runtime(fake_trt.engine)


def test_missing_or_empty_engine(fake_trt, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Runtime(tmp_path / "none.engine")
    (tmp_path / "empty.plan").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        Runtime(tmp_path / "empty.plan")


def test_without_tensorrt_installed_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(MissingExtraError, match=r"fer_edge\[gpu\]"):
        Runtime(engine)


def test_cuda_api_choice():
    with pytest.raises(FerEdgeError, match="unknown CUDA binding"):
        trt_backend.cuda_api("opencl")


# -- a real GPU ----------------------------------------------------------------------------------------------
def _build_engine(trt, onnx_path, engine_path, max_batch=64):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10+: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as fh:
        assert parser.parse(fh.read()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 1, 40, 40), (max_batch // 2, 1, 40, 40), (max_batch, 1, 40, 40))
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    assert blob is not None
    with open(engine_path, "wb") as fh:
        fh.write(bytes(blob))


@pytest.mark.gpu
def test_real_engine_matches_onnxruntime(tmp_path):
    trt = pytest.importorskip("tensorrt")
    try:
        api = trt_backend.cuda_api()
        gpu, cc = api.device_name(), api.compute_capability()
        api.close()
    except Exception as exc:  # no CUDA binding, driver or GPU
        pytest.skip(f"no usable CUDA device: {exc}")
    engine = tmp_path / "default.engine"
    _build_engine(trt, default_model_path(), engine)
    with Runtime(tta="none") as cpu:
        md = cpu.metadata
        faces = np.random.default_rng(0).integers(0, 256, (100, 48, 48), dtype=np.uint8)
        want = cpu.predict_faces(faces)
    sidecar = {"tensorrt_version": trt.__version__, "gpu_name": gpu, "compute_capability": f"{cc[0]}.{cc[1]}",
               "precision": "fp32", "metadata": md.to_dict()}
    (tmp_path / "default.engine.json").write_text(json.dumps(sidecar))
    x = ((faces[:, None, 4:44, 4:44].astype(np.float32) / 255) - 0.5) / 0.5
    tried = 0
    for binding in ("pycuda", "cuda-python"):
        try:
            runner = TensorRTRunner(engine, cuda=binding).activate()
        except MissingExtraError:
            continue
        tried += 1
        try:
            for n in (1, 37, 64):  # set_input_shape per batch
                logits = runner.infer({"input": x[:n]})["logits"]
                e = np.exp(logits - logits.max(1, keepdims=True))
                np.testing.assert_allclose(e / e.sum(1, keepdims=True), want[:n], atol=2e-3)
        finally:
            runner.deactivate()
    assert tried
    with Runtime(engine, tta="none") as rt:  # 100 faces: two calls under the profile's maximum of 64
        np.testing.assert_allclose(rt.predict_faces(faces), want, atol=2e-3)
        assert rt.info()["backend"] == "tensorrt"
    wrong = dict(sidecar, tensorrt_version="9.0.0")
    (tmp_path / "default.engine.json").write_text(json.dumps(wrong))
    with pytest.raises(ModelError, match="TensorRT 9.0.0"):
        Runtime(engine)


def test_expected_probs_helper_consistent():
    faces = np.zeros((1, 48, 48), np.uint8)
    w, b = np.zeros((1600, 7), np.float32), np.zeros(7, np.float32)
    np.testing.assert_allclose(expected_probs(faces, w, b), np.full((1, 7), 1 / 7))
