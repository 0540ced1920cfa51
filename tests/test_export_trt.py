"""The TensorRT engine builder: its TensorRT 10 and 11 decisions with a stand-in tensorrt module, the
calibrator, the sidecar JSON, the one-line failures; and real builds where TensorRT and a GPU exist."""

import json
import os
import sys

import numpy as np
import pytest

from export import tensorrt_build as tb
from fer_edge.errors import MissingExtraError, ModelError

from test_export_support import FakeDevice, fake_tensorrt


# ---------------------------------------------------------------------------------------------
# Decisions (no TensorRT needed)


@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_plan_for_the_gpu(major, precision):
    plan = tb.plan_build(major, precision)
    assert plan.dla_core is None and not plan.calibrate
    if major >= 11:
        # Strong typing: the ONNX file's types decide, no precision flags exist.
        assert plan.strongly_typed and plan.flags == () and plan.onnx == precision
    else:
        assert not plan.strongly_typed
        assert plan.flags == {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
        assert plan.onnx == ("int8" if precision == "int8" else "fp32")


def test_plan_for_dla():
    plan = tb.plan_build(10, "int8", dla_core=1)
    assert plan.calibrate and plan.onnx == "fp32" and not plan.strongly_typed
    assert set(plan.flags) == {"INT8", "FP16", "GPU_FALLBACK"} and plan.dla_core == 1
    plan = tb.plan_build(10, "fp16", dla_core=0)
    assert set(plan.flags) == {"FP16", "GPU_FALLBACK"} and not plan.calibrate
    plan = tb.plan_build(11, "int8", dla_core=0)
    assert plan.strongly_typed and plan.flags == ("GPU_FALLBACK",) and plan.onnx == "int8" and not plan.calibrate
    with pytest.raises(ModelError, match="FP16 or INT8"):
        tb.plan_build(10, "fp32", dla_core=0)


def test_plan_refuses_old_tensorrt_and_bad_profiles():
    with pytest.raises(ModelError, match="too old"):
        tb.plan_build(8, "fp16")
    assert tb.resolve_profile((1, 64, 256)) == (1, 64, 256)
    assert tb.resolve_profile((1, 64, 256), dla_core=0) == (64, 64, 64)  # DLA takes no dynamic shapes
    with pytest.raises(ModelError, match="min <= opt <= max"):
        tb.resolve_profile((8, 4, 16))


# ---------------------------------------------------------------------------------------------
# The chain, on a stand-in tensorrt module


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """FP32, FP16 and INT8 ONNX files of a tiny model, as fer-export writes them."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from export import fp16, onnx_export, quantize
    from export.data import fixed_size_batches

    from test_export_support import tiny_metadata, tiny_model

    meta = tiny_metadata()
    proto = onnx_export.export_module(tiny_model(), meta)
    batches = fixed_size_batches(onnx_export.random_faces(40, meta), 16)
    files = {"fp32": proto, "fp16": fp16.to_fp16(proto, meta),
             "int8": quantize.quantize(proto, meta, batches, "tensorrt")[0]}
    folder = tmp_path_factory.mktemp("onnx")
    paths = {}
    for key, p in files.items():
        paths[key] = str(folder / f"m_{key}.onnx")
        with open(paths[key], "wb") as fh:
            fh.write(p.SerializeToString())
    return paths, meta, batches


def _read(path):
    with open(path, "rb") as fh:
        return fh.read()


GPU = {"name": "NVIDIA Orin (test)", "compute_capability": "8.7"}


def _build(trt, plan, onnx_files, tmp_path, calibrator=None, profile=(1, 64, 256)):
    paths, meta, _ = onnx_files
    engine = str(tmp_path / "m.engine")
    sidecar = tb.build_engine(trt, GPU, plan, _read(paths[plan.onnx]), os.path.basename(paths[plan.onnx]), meta,
                              engine, tb.resolve_profile(profile, plan.dla_core), 256, str(tmp_path / "m.timing"),
                              calibrator)
    builder = trt.builders[-1]
    network, config = builder.builds[-1]
    return engine, sidecar, network, config


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt10_gpu_sets_precision_flags(onnx_files, tmp_path, precision):
    trt = fake_tensorrt("10.3.0")
    plan = tb.plan_build(10, precision)
    engine, sidecar, network, config = _build(trt, plan, onnx_files, tmp_path)
    assert network.flags == 0  # weakly typed, no deprecated EXPLICIT_BATCH
    assert config.flags == [precision.upper()]
    assert config.int8_calibrator is None
    # FP16 comes from the flag on the FP32 network; INT8 from the Q/DQ network.
    assert network.parsed == ("int8" if precision == "int8" else "fp32")
    assert config.pools == {"WORKSPACE": 256 << 20}
    assert config.profiles[0].shapes["input"] == ((1, 1, 40, 40), (64, 1, 40, 40), (256, 1, 40, 40))
    assert _read(engine) == b"ENGINE:" + network.parsed.encode()
    assert _read(str(tmp_path / "m.timing")).startswith(b"TIMING")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt11_is_strongly_typed_without_precision_flags(onnx_files, tmp_path, precision):
    trt = fake_tensorrt("11.4.1")
    plan = tb.plan_build(11, precision)
    engine, sidecar, network, config = _build(trt, plan, onnx_files, tmp_path)
    assert network.flags == 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert config.flags == [] and config.int8_calibrator is None
    assert network.parsed == precision  # the FP16 ONNX, or the Q/DQ ONNX
    assert sidecar["strongly_typed"] and sidecar["precision"] == precision


def test_tensorrt10_dla_int8_calibrates_implicitly(onnx_files, tmp_path):
    trt = fake_tensorrt("10.3.0")
    paths, meta, batches = onnx_files
    device = FakeDevice()
    cache = tmp_path / "m.calib"
    calibrator = tb.make_calibrator(trt, batches, cache, device=device)
    plan = tb.plan_build(10, "int8", dla_core=1)
    engine, sidecar, network, config = _build(trt, plan, onnx_files, tmp_path, calibrator)
    assert network.parsed == "fp32"
    assert set(config.flags) == {"INT8", "FP16", "GPU_FALLBACK"}
    assert config.int8_calibrator is calibrator
    assert config.calibration_profile.shapes["input"] == ((16, 1, 40, 40),) * 3
    assert config.default_device_type == "DLA" and config.DLA_core == 1
    assert config.profiles[0].shapes["input"] == ((64, 1, 40, 40),) * 3
    # Every calibration batch went to the device, in order, and the cache was written.
    assert calibrator.batches_fed == len(batches) == len(device.uploads)
    assert all(np.array_equal(a, b) for a, b in zip(device.uploads, batches)) and device.freed
    assert cache.read_bytes().startswith(b"TRT-FAKE-EntropyCalibration2")
    assert sidecar["dla_core"] == 1 and sidecar["profile"] == {"min": 64, "opt": 64, "max": 64}
    assert sidecar["quantization"].startswith("implicit")


def test_calibrator_reuses_an_existing_cache(onnx_files, tmp_path):
    trt = fake_tensorrt("10.3.0")
    _, _, batches = onnx_files
    cache = tmp_path / "c.calib"
    cache.write_bytes(b"TRT-CACHED")
    device = FakeDevice()
    calibrator = tb.make_calibrator(trt, batches, cache, device=device)
    _build(trt, tb.plan_build(10, "int8", dla_core=0), onnx_files, tmp_path, calibrator)
    assert calibrator.batches_fed == 0 and cache.read_bytes() == b"TRT-CACHED"


def test_calibration_cache_pass_writes_a_fresh_cache(onnx_files, tmp_path, monkeypatch):
    trt = fake_tensorrt("10.3.0")
    paths, _, batches = onnx_files
    cache = tmp_path / "m.calib"
    cache.write_bytes(b"STALE")  # from an older model: must not be read back instead of calibrating
    original = tb.make_calibrator
    monkeypatch.setattr(tb, "make_calibrator",
                        lambda trt_, batches_, path_: original(trt_, batches_, path_, device=FakeDevice()))
    fed = tb.write_calibration_cache(trt, _read(paths["fp32"]), batches, str(cache))
    assert fed == len(batches)
    assert cache.read_bytes().startswith(b"TRT-FAKE")
    network, config = trt.builders[-1].builds[-1]
    assert config.flags == ["INT8"] and network.parsed == "fp32" and config.int8_calibrator is not None
    assert [p for p in os.listdir(tmp_path) if p.endswith(".part")] == []


def test_tensorrt11_has_no_calibration_cache(onnx_files, tmp_path):
    paths, _, batches = onnx_files
    with pytest.raises(ModelError, match="no implicit INT8"):
        tb.write_calibration_cache(fake_tensorrt("11.0.0"), _read(paths["fp32"]), batches, str(tmp_path / "c"))


def test_sidecar_describes_the_engine(onnx_files, tmp_path):
    from fer_edge.metadata import ModelMetadata, engine_sidecar_path

    trt = fake_tensorrt("10.3.0")
    engine, sidecar, _, _ = _build(trt, tb.plan_build(10, "fp16"), onnx_files, tmp_path)
    with open(engine_sidecar_path(engine)) as fh:
        stored = json.load(fh)
    assert stored == sidecar
    assert stored["tensorrt_version"] == "10.3.0" and stored["gpu_name"] == GPU["name"]
    assert stored["compute_capability"] == "8.7" and stored["precision"] == "fp16"
    assert stored["profile"] == {"min": 1, "opt": 64, "max": 256} and stored["dla_core"] is None
    meta = ModelMetadata.from_dict(stored["metadata"])
    assert meta.precision == "fp16" and meta.architecture == "vgg_tiny"


def test_missing_dla_core_is_a_clear_error(onnx_files, tmp_path):
    with pytest.raises(tb.NoGpuError, match="2 DLA cores"):
        _build(fake_tensorrt("10.3.0"), tb.plan_build(10, "fp16", dla_core=5), onnx_files, tmp_path)


def test_tensorrt11_would_fail_on_a_removed_flag():
    # The stand-in mirrors TensorRT 11: asking it for BuilderFlag.FP16 fails, so the tests above would
    # catch a plan that sets it.
    with pytest.raises(AttributeError):
        fake_tensorrt("11.0.0").BuilderFlag.FP16


# ---------------------------------------------------------------------------------------------
# fer-export --engine without TensorRT or without a GPU


def test_engine_without_tensorrt_prints_one_line(tmp_path, monkeypatch, capsys):
    from export.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    code = main([str(model), "-o", str(tmp_path / "out.onnx"), "--engine", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "tensorrt is not installed" in err[0] and "fer_edge[gpu]" in err[0]
    assert not (tmp_path / "out.onnx").exists()


def test_engine_without_gpu_prints_one_line(tmp_path, monkeypatch, capsys):
    from export.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.3.0"))
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setattr("shutil.which", lambda name: None)
    torch = sys.modules.get("torch")
    if torch is not None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    code = main([str(model), "-o", str(tmp_path / "out.onnx"), "--engine", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "no CUDA GPU" in err[0]


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingExtraError, match=r"fer_edge\[gpu\]"):
        tb.import_tensorrt()


# ---------------------------------------------------------------------------------------------
# Real TensorRT (skipped without it and a GPU)


def _real_tensorrt():
    trt = pytest.importorskip("tensorrt")
    try:
        tb.gpu_info()
    except tb.NoGpuError as exc:
        pytest.skip(str(exc))
    return trt


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_builds_and_deserializes(onnx_files, tmp_path, precision):
    trt = _real_tensorrt()
    major = tb.trt_major(trt)
    plan = tb.plan_build(major, precision)
    paths, meta, _ = onnx_files
    engine = str(tmp_path / "m.engine")
    sidecar = tb.build_engine(trt, tb.gpu_info(), plan, _read(paths[plan.onnx]), "m.onnx", meta, engine,
                              (1, 8, 32), 256, str(tmp_path / "m.timing"))
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine(_read(engine)) is not None
    assert sidecar["tensorrt_version"] == trt.__version__ and os.path.getsize(tmp_path / "m.timing") > 0


@pytest.mark.gpu
def test_real_tensorrt10_writes_a_calibration_cache(onnx_files, tmp_path):
    trt = _real_tensorrt()
    if tb.trt_major(trt) >= 11:
        pytest.skip("TensorRT 11 has no implicit calibration")
    paths, _, batches = onnx_files
    fed = tb.write_calibration_cache(trt, _read(paths["fp32"]), batches, str(tmp_path / "m.calib"), (1, 8, 32))
    assert fed == len(batches)
    assert (tmp_path / "m.calib").read_bytes().startswith(b"TRT-")
