"""The video pipeline and fer-video: outputs and their formats on a video written here, bad sources,
corrupt frames, crashes that must leave no file, and the real clip in ../shared when present."""

import csv
import json
import logging
import os
import sys

import numpy as np
import pytest

from fer_edge import Runtime
from fer_edge.cli import video as video_cli
from fer_edge.constants import CLASS_NAMES
from fer_edge.faces import InputError
from fer_edge.video import VideoOptions, analyze_video, source_name
from tests.test_detection import TEST_VIDEO
from tests.test_runtime_support import PatchDetector, make_linear_onnx, write_test_video

pytest.importorskip("onnx")
COLUMNS = ["frame", "time_s", "face", "x", "y", "w", "h", "label", "score"] + list(CLASS_NAMES)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "linear.onnx"
    make_linear_onnx(path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    boxes = write_test_video(path, n_frames=30)
    return path, boxes


def _rt(model, **kw):
    return Runtime(model, detector=kw.pop("detector", PatchDetector()), tta="none", threads=1, **kw)


def _opts(**kw):
    kw.setdefault("progress", False)
    return VideoOptions(**kw)


def _read_csv(path):
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, list(reader)


def test_csv_json_and_timeline(model, clip, tmp_path):
    path, truth = clip
    with _rt(model) as rt:
        s = analyze_video(rt, str(path), tmp_path, _opts(every=3))
    assert sorted(os.listdir(tmp_path)) == ["clip.csv", "clip.json", "clip.png"]  # no temporary file left
    header, rows = _read_csv(tmp_path / "clip.csv")
    assert header == COLUMNS and len(rows) == 30
    for i, r in enumerate(rows):
        frame, t, face, x, y, w, h = int(r[0]), float(r[1]), int(r[2]), *map(int, r[3:7])
        assert frame == i and t == pytest.approx(i / 25, abs=1e-3) and face == 0
        tx, ty, tw, th = truth[i - i % 3]  # the box found at the last detection frame is carried
        assert abs(x - tx) <= 3 and abs(y - ty) <= 3 and abs(w - tw) <= 4 and abs(h - th) <= 4
        probs = np.array(r[9:], float)
        assert probs.sum() == pytest.approx(1, abs=1e-3)
        assert r[7] == CLASS_NAMES[int(np.argmax(probs))] and float(r[8]) == pytest.approx(probs.max(), abs=1e-4)
    on_disk = json.loads((tmp_path / "clip.json").read_text())
    assert on_disk == json.loads(json.dumps(s))
    assert s["frames"] == 30 and s["frames_with_face"] == 30 and s["faces"] == 30 and s["tracks"] == 1
    assert s["face_fraction"] == 1.0 and s["skipped_frames"] == 0 and s["fps"] > 0
    assert sum(s["emotion_shares"].values()) == pytest.approx(1)
    assert set(s["mean_probabilities"]) == set(CLASS_NAMES)
    assert s["source"]["width"] == 320 and s["options"]["every"] == 3
    assert s["runtime"]["backend"] == "onnxruntime" and s["outputs"]["rows"] == "clip.csv"
    assert (tmp_path / "clip.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_equal_single_frame_detection_without_smoothing(model, clip, tmp_path):
    import cv2

    path, _ = clip
    with _rt(model) as rt:
        analyze_video(rt, str(path), tmp_path, _opts(every=1, smoothing=0.0, timeline=False, max_frames=6))
        _, rows = _read_csv(tmp_path / "clip.csv")
        assert len(rows) == 6
        cap = cv2.VideoCapture(str(path))
        for r in rows:
            ok, frame = cap.read()
            (face,) = rt.detect(frame, boxes=[list(map(int, r[3:7]))])
            np.testing.assert_allclose(np.array(r[9:], float), face.scores, atol=1e-4)
        cap.release()


def test_jsonl_and_annotated_video(model, clip, tmp_path):
    import cv2

    path, _ = clip
    with _rt(model) as rt:
        s = analyze_video(rt, str(path), tmp_path, _opts(fmt="jsonl", annotate=True, timeline=False))
    assert sorted(os.listdir(tmp_path)) == ["clip.annotated.mp4", "clip.json", "clip.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "clip.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and list(rows[0]) == COLUMNS
    assert s["outputs"]["annotated"] == "clip.annotated.mp4"
    cap = cv2.VideoCapture(str(tmp_path / "clip.annotated.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    ok, frame = cap.read()
    assert ok and frame.shape == (240, 320, 3)
    cap.release()


def test_smoothing_changes_rows_but_keeps_them_distributions(model, clip, tmp_path):
    path, _ = clip
    with _rt(model) as rt:
        analyze_video(rt, str(path), tmp_path / "a", _opts(every=1, smoothing=0.0, timeline=False))
        analyze_video(rt, str(path), tmp_path / "b", _opts(every=1, smoothing=0.8, timeline=False))
    _, a = _read_csv(tmp_path / "a" / "clip.csv")
    _, b = _read_csv(tmp_path / "b" / "clip.csv")
    pa, pb = np.array([r[9:] for r in a], float), np.array([r[9:] for r in b], float)
    np.testing.assert_allclose(pa[0], pb[0], atol=1e-4)  # the first frame has no past
    np.testing.assert_allclose(pb.sum(1), 1, atol=1e-3)
    # smoothing damps frame-to-frame change
    assert np.abs(np.diff(pb, axis=0)).sum() < np.abs(np.diff(pa, axis=0)).sum()


def test_timeline_skipped_without_matplotlib(model, clip, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with _rt(model) as rt:
        s = analyze_video(rt, str(clip[0]), tmp_path, _opts(max_frames=5))
    assert sorted(os.listdir(tmp_path)) == ["clip.csv", "clip.json"]
    assert s["outputs"]["timeline"] is None and "matplotlib" in s["notes"][0]


def _bad_sources(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    (tmp_path / "notes.txt").write_text("not a video\n" * 100)
    (tmp_path / "folder.mp4").mkdir()
    good = tmp_path / "good.mp4"
    write_test_video(good, n_frames=10)
    data = good.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[:len(data) // 2])
    return {"missing": (str(tmp_path / "missing.mp4"), "no such file"),
            "empty": (str(tmp_path / "empty.mp4"), "empty"),
            "random": (str(tmp_path / "random.mp4"), "not a video"),
            "text": (str(tmp_path / "notes.txt"), "not a video"),
            "folder": (str(tmp_path / "folder.mp4"), "not a file"),
            "truncated": (str(tmp_path / "truncated.mp4"), "not a video"),
            "camera": ("57", "camera 57 cannot be opened")}


@pytest.mark.parametrize("kind", ["missing", "empty", "random", "text", "folder", "truncated", "camera"])
def test_bad_sources_fail_cleanly(model, tmp_path, kind):
    source, match = _bad_sources(tmp_path / "in")[kind]
    out = tmp_path / "out"
    with _rt(model) as rt:
        with pytest.raises(InputError, match=match):
            analyze_video(rt, source, out, _opts())
    assert not out.exists() or os.listdir(out) == []


def _corrupt_mjpeg_frame(path, index):
    """Overwrite the JPEG data of frame ``index`` of an MJPG AVI with noise."""
    data = bytearray(path.read_bytes())
    movi_end = data.find(b"idx1")
    chunks, pos = [], data.find(b"00dc", data.find(b"movi"))
    while 0 <= pos < movi_end:
        chunks.append(pos)
        pos = data.find(b"00dc", pos + 8)
    size = int.from_bytes(data[chunks[index] + 4:chunks[index] + 8], "little")
    start = chunks[index] + 8
    data[start:start + size] = np.random.default_rng(1).integers(0, 256, size, np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_corrupt_frame_is_logged_and_skipped(model, tmp_path, caplog):
    path = tmp_path / "mj.avi"
    write_test_video(path, n_frames=30, fourcc="MJPG")
    _corrupt_mjpeg_frame(path, 10)
    with caplog.at_level(logging.WARNING, logger="fer_edge.video"), _rt(model) as rt:
        s = analyze_video(rt, str(path), tmp_path / "out", _opts(every=2))
    assert s["frames"] == 29 and s["skipped_frames"] == 1
    _, rows = _read_csv(tmp_path / "out" / "mj.csv")
    assert [int(r[0]) for r in rows] == [i for i in range(30) if i != 10]
    assert any("frame 10 could not be decoded" in m for m in caplog.messages)


def test_crash_midway_leaves_no_file(model, clip, tmp_path):
    with _rt(model, detector=PatchDetector(fail_at=4)) as rt:
        with pytest.raises(RuntimeError, match="on purpose"):
            analyze_video(rt, str(clip[0]), tmp_path, _opts(every=1, annotate=True))
    assert os.listdir(tmp_path) == []


def test_runtime_without_detector_is_refused(model, clip, tmp_path):
    from fer_edge.errors import FerEdgeError

    with Runtime(model, detector=None) as rt:
        with pytest.raises(FerEdgeError, match="detector"):
            analyze_video(rt, str(clip[0]), tmp_path, _opts())


def test_stream_url_source(model, clip, tmp_path):
    with _rt(model) as rt:
        s = analyze_video(rt, f"file://{clip[0]}", tmp_path, _opts(timeline=False))
        assert s["source"]["kind"] == "stream" and s["frames"] == 30 and s["faces"] == 30
        assert sorted(os.listdir(tmp_path)) == ["clip.csv", "clip.json"]
        with pytest.raises(InputError, match="cannot be opened"):
            analyze_video(rt, "rtsp://127.0.0.1:1/none", tmp_path / "x", _opts())
    assert not (tmp_path / "x").exists()


def test_source_names():
    assert source_name("/a/b/clip.final.mp4") == "clip.final"
    assert source_name("0") == source_name(0) == "camera0"
    assert source_name("rtsp://cam.local:554/live/stream1?x=1") == "stream1"
    assert source_name("http://host") == "host"


# -- the command ---------------------------------------------------------------------------------------------
def test_cli_help_states_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        video_cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--every", "--batch", "--format", "--detect-size", "--smooth", "--threads"):
        assert option in out
    assert out.count("default") >= 12


def test_cli_good_and_bad_sources(clip, tmp_path, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    code = video_cli.main([str(clip[0]), str(bad), str(clip[0]), "--out-dir", str(out), "--format", "jsonl",
                           "--every", "2", "--no-progress", "--tta", "none"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.mp4" in err[0] and "Traceback" not in err[0]
    # Haar does not see the drawn face: the outputs exist and say so
    assert sorted(os.listdir(out)) == ["clip-2.json", "clip-2.jsonl", "clip-2.png", "clip.json", "clip.jsonl",
                                       "clip.png"]
    s = json.loads((out / "clip.json").read_text())
    assert s["frames"] == 30 and s["options"]["every"] == 2


@pytest.mark.parametrize("argv", [["--every", "0"], ["--smooth", "1.5"], ["--format", "xml"]])
def test_cli_bad_options(clip, tmp_path, capsys, argv):
    try:
        code = video_cli.main([str(clip[0]), "--out-dir", str(tmp_path / "o")] + argv)
    except SystemExit as exc:  # argparse's own choices check
        code = exc.code
    assert code == 2 and not (tmp_path / "o").exists()
    err = capsys.readouterr().err
    assert "error:" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_cli_bad_model_is_one_line(clip, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_text("garbage")
    assert video_cli.main([str(clip[0]), "--out-dir", str(tmp_path / "o"), "--model", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a loadable ONNX model" in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_on_the_real_clip(tmp_path, capsys):
    if not os.path.isfile(TEST_VIDEO):
        pytest.skip(f"{TEST_VIDEO} not present")
    assert video_cli.main([TEST_VIDEO, "--out-dir", str(tmp_path), "--no-progress"]) == 0
    s = json.loads((tmp_path / "test.json").read_text())
    assert s["frames"] == 115 and s["face_fraction"] >= 0.95 and s["tracks"] <= 2
    header, rows = _read_csv(tmp_path / "test.csv")
    assert header == COLUMNS and len(rows) >= 110
    assert "frames/s" in capsys.readouterr().out
