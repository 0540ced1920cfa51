"""fer-export end to end on a tiny checkpoint and a synthetic FER2013 tree; user errors; the ONNX-only path
without torch; engines and Triton models through a stand-in tensorrt."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("cv2")

from export.cli import main  # noqa: E402
from export.triton import read_config  # noqa: E402
from fer_edge.metadata import ModelMetadata, from_onnx_proto  # noqa: E402

from test_export_support import FakeDevice, fake_tensorrt, write_checkpoint, write_fer_tree  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fer_export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FER_EDGE_CACHE", str(root / "cache"))
        data = write_fer_tree(root / "fer2013")
        ckpt = write_checkpoint(root / "best.pt")
        yield root, data, ckpt


@pytest.fixture(autouse=True)
def _cache(workdir, monkeypatch):
    monkeypatch.setenv("FER_EDGE_CACHE", str(workdir[0] / "cache"))


@pytest.fixture(scope="module")
def full_export(workdir):
    root, data, ckpt = workdir
    out = root / "out" / "fer.onnx"
    args = [ckpt, "-o", str(out), "--fp16", "--int8", "--calib", data, "--calib-size", "35", "--calib-batch", "16",
            "--triton-repo", str(root / "triton")]
    import contextlib
    import io

    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FER_EDGE_CACHE", str(root / "cache"))
        with contextlib.redirect_stdout(buf):
            code = main(args)
    return code, buf.getvalue(), out, root


def _meta(path):
    return from_onnx_proto(onnx.load(str(path)))


def test_full_export_writes_every_file(full_export):
    code, text, out, root = full_export
    assert code == 0, text
    for name in ("fer.onnx", "fer_fp16.onnx", "fer_int8.onnx"):
        assert (out.parent / name).is_file()
    assert sorted(os.listdir(out.parent)) == ["fer.onnx", "fer_fp16.onnx", "fer_int8.onnx"]  # no .data, no .part
    assert "ONNX Runtime vs PyTorch, max abs logit difference: batch 1:" in text and "batch 64:" in text
    assert "FP16 argmax agreement with FP32 on PublicTest (42 faces" in text
    assert "PublicTest top-1 (42 faces, TTA none): FP32" in text


def test_full_export_metadata(full_export):
    _, _, out, _ = full_export
    fp32, fp16, int8 = (_meta(out.parent / n) for n in ("fer.onnx", "fer_fp16.onnx", "fer_int8.onnx"))
    assert (fp32.precision, fp16.precision, int8.precision) == ("fp32", "fp16", "int8")
    assert fp16.metrics["fp16_argmax_agreement"] >= 0.999
    drop = int8.metrics["int8"]
    assert drop["n"] == 42 and drop["split"] == "public"
    assert drop["top1_drop_points"] == pytest.approx((drop["fp32_top1"] - drop["int8_top1"]) * 100)
    calib = int8.extra["int8"]["calibration"]
    assert calib["images"] == 35 and calib["per_class"] == [5] * 7 and calib["batch_size"] == 16
    assert int8.extra["int8"]["target"] == "tensorrt"


def test_full_export_triton_repository(full_export):
    _, _, out, root = full_export
    repo = root / "triton"
    assert sorted(os.listdir(repo)) == ["fer", "fer_fp16", "fer_int8"]
    cfg, meta = read_config(repo / "fer_int8" / "config.pbtxt")
    assert cfg["platform"] == ["onnxruntime_onnx"] and cfg["max_batch_size"] == [256]
    assert cfg["instance_group"][0]["kind"] == ["KIND_CPU"]
    assert cfg["dynamic_batching"][0]["preferred_batch_size"] == [16, 64]
    assert ModelMetadata.from_dict(meta).precision == "int8"
    assert (repo / "fer_int8" / "1" / "model.onnx").read_bytes() == (out.parent / "fer_int8.onnx").read_bytes()


def test_onnx_input_quantizes_without_torch(full_export, workdir, tmp_path):
    """An existing FP32 ONNX file is quantized (cpu flavour) in a process where torch cannot be imported."""
    _, _, out, _ = full_export
    _, data, _ = workdir
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["sympy"] = None  # onnxruntime no longer depends on it
        from export.cli import main
        code = main([{str(out)!r}, "-o", {str(tmp_path / 'copy.onnx')!r}, "--int8", "--target", "cpu",
                     "--calib", {data!r}, "--calib-size", "35"])
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        sys.exit(code)
    """)
    env = dict(os.environ, FER_EDGE_CACHE=str(workdir[0] / "cache"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no PyTorch to compare with" in proc.stdout
    meta = _meta(tmp_path / "copy_int8_cpu.onnx")
    assert meta.extra["int8"]["target"] == "cpu" and "top1_drop_points" in meta.metrics["int8"]


def test_help_needs_no_heavy_package():
    script = textwrap.dedent("""
        import sys
        for name in ("torch", "onnx", "onnxruntime", "tensorrt", "numpy", "cv2"):
            sys.modules[name] = None
        from export.cli import main
        try:
            main(["--help"])
        except SystemExit as exc:
            sys.exit(exc.code)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--calib-method" in proc.stdout and "(default: minmax)" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--int8"], "--int8 needs --calib"),
    (["--dla-core", "0"], "--dla-core needs --engine"),
    (["--profile", "1,64"], "MIN,OPT,MAX"),
    (["--profile", "64,8,256"], "MIN <= OPT"),
    (["--ensemble-weights", "1", "2"], "--ensemble-weights needs --ensemble"),
])
def test_user_errors_print_one_line(workdir, capsys, args, message):
    _, _, ckpt = workdir
    code = main([ckpt, "-o", os.devnull] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and err[0].startswith("fer-export: error:")


def test_missing_model_and_bad_checkpoint(workdir, tmp_path, capsys):
    assert main([str(tmp_path / "nope.pt"), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main([str(bad), "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pt" in err[0]
    assert not (tmp_path / "o.onnx").exists()


def test_mixed_ensemble_of_checkpoint_and_onnx(full_export, workdir, tmp_path, capsys):
    _, _, out, _ = full_export
    _, _, ckpt = workdir
    other = write_checkpoint(tmp_path / "other.pt", seed=3)
    code = main([ckpt, "--ensemble", str(out), other, "--ensemble-weights", "1", "1", "2",
                 "-o", str(tmp_path / "ens.onnx")])
    assert code == 0, capsys.readouterr().err
    assert "members' weighted mean" in capsys.readouterr().out
    meta = _meta(tmp_path / "ens.onnx")
    assert meta.output == "probabilities" and meta.extra["ensemble"]["weights"] == [0.25, 0.25, 0.5]


# ---------------------------------------------------------------------------------------------
# Engines through a stand-in tensorrt


@pytest.fixture
def fake_trt(monkeypatch):
    from export import tensorrt_build as tb

    def install(version):
        trt = fake_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(tb, "gpu_info", lambda: {"name": "Fake GPU", "compute_capability": "8.9"})
        monkeypatch.setattr(tb, "_DeviceBuffer", FakeDevice)
        return trt

    return install


def test_engine_tensorrt10_int8_with_calibration_cache_and_triton(workdir, tmp_path, fake_trt, capsys):
    _, data, ckpt = workdir
    trt = fake_trt("10.3.0")
    engine = tmp_path / "fer.engine"
    code = main([ckpt, "-o", str(tmp_path / "fer.onnx"), "--int8", "--calib", data, "--calib-size", "35",
                 "--calib-batch", "16", "--engine", str(engine), "--triton-repo", str(tmp_path / "repo")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "fer.engine.calib").read_bytes().startswith(b"TRT-FAKE")
    assert (tmp_path / "fer.engine.timing").is_file()
    side = json.loads((tmp_path / "fer.engine.json").read_text())
    assert side["precision"] == "int8" and side["compute_capability"] == "8.9"
    assert side["quantization"].startswith("explicit") and side["metadata"]["precision"] == "int8"
    calib_build, engine_build = trt.builders[-2].builds[-1], trt.builders[-1].builds[-1]
    assert calib_build[1].int8_calibrator is not None and calib_build[0].parsed == "fp32"
    assert engine_build[1].flags == ["INT8"] and engine_build[0].parsed == "int8"
    cfg, _ = read_config(tmp_path / "repo" / "fer_trt" / "config.pbtxt")
    assert cfg["platform"] == ["tensorrt_plan"] and cfg["instance_group"][0]["kind"] == ["KIND_GPU"]
    assert (tmp_path / "repo" / "fer_trt" / "1" / "model.plan").read_bytes() == engine.read_bytes()


def test_engine_tensorrt11_fp16_uses_the_fp16_onnx(workdir, tmp_path, fake_trt, capsys):
    _, _, ckpt = workdir
    trt = fake_trt("11.4.1")
    code = main([ckpt, "-o", str(tmp_path / "fer.onnx"), "--fp16", "--engine", str(tmp_path / "fer.engine")])
    assert code == 0, capsys.readouterr().err
    network, config = trt.builders[-1].builds[-1]
    assert network.parsed == "fp16" and network.flags == 2 and config.flags == []
    assert not (tmp_path / "fer.engine.calib").exists()


def test_engine_int8_cpu_flavour_is_refused(workdir, tmp_path, capsys):
    _, data, ckpt = workdir
    code = main([ckpt, "-o", str(tmp_path / "f.onnx"), "--int8", "--calib", data, "--target", "cpu",
                 "--engine", str(tmp_path / "f.engine")])
    assert code == 2 and "--target cpu" in capsys.readouterr().err


def test_dla_without_reduced_precision_fails_before_any_work(workdir, tmp_path, fake_trt, capsys):
    _, _, ckpt = workdir
    fake_trt("10.3.0")
    code = main([ckpt, "-o", str(tmp_path / "f.onnx"), "--engine", str(tmp_path / "f.engine"), "--dla-core", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "FP16 or INT8" in err[0]
    assert os.listdir(tmp_path) == []
