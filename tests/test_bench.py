"""fer-bench: table and JSON, several models measured alternately, video end to end, bad options."""

import json

import pytest

from fer_edge.cli import bench
from fer_edge.models import default_model_path
from tests.test_runtime_support import make_linear_onnx, write_test_video

FAST = ["--batch-sizes", "1,4", "--seconds", "0.05", "--rounds", "2", "--warmup", "1"]


def test_default_model_table_and_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(FAST + ["--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "faces/s" in table and "fer_edge_default.onnx" in table and "CPUExecutionProvider" in table
    data = json.loads(out.read_text())
    assert data["machine"]["cpus"] >= 1 and data["settings"]["batch_sizes"] == [1, 4]
    (m,) = data["models"]
    assert m["model"] == default_model_path() and m["providers"] == ["CPUExecutionProvider"]
    assert [b["batch"] for b in m["batches"]] == [1, 4]
    for b in m["batches"]:
        assert 0 < b["p50_ms"] <= b["p90_ms"] <= b["p99_ms"] and b["faces_per_s"] > 0
        assert b["preprocess_us_per_face"] > 0 and b["iterations"] >= 3


def test_several_models_and_video(tmp_path, capsys):
    pytest.importorskip("onnx")
    lin = tmp_path / "lin.onnx"
    make_linear_onnx(lin)
    video = tmp_path / "v.mp4"
    write_test_video(video, n_frames=12)
    out = tmp_path / "b.json"
    code = bench.main(FAST + ["--model", default_model_path(), "--model", str(lin), "--video", str(video),
                              "--json", str(out), "--threads", "1"])
    assert code == 0
    table = capsys.readouterr().out
    assert "vs first" in table and "1.00x" in table and "frames/s end to end" in table
    data = json.loads(out.read_text())
    assert [m["model"] for m in data["models"]] == [default_model_path(), str(lin)]
    for m in data["models"]:
        assert m["video"]["frames"] == 12 and m["video"]["fps"] > 0


@pytest.mark.parametrize("argv", [["--batch-sizes", "0,4"], ["--batch-sizes", "a"]])
def test_bad_batch_sizes_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2 and "batch sizes" in capsys.readouterr().err


def test_bad_model_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("x")
    assert bench.main(FAST + ["--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a loadable ONNX model" in err[0]


def test_bad_video_is_one_line(tmp_path, capsys):
    assert bench.main(FAST + ["--video", str(tmp_path / "none.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_help_states_defaults(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    out = capsys.readouterr().out
    assert "--model" in out and "--batch-sizes" in out and out.count("default") >= 10
