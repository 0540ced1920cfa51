"""Expressions of every face in a video file, camera or stream, written as CSV/JSONL, a summary JSON, an
emotion timeline PNG and optionally an annotated MP4.

The pipeline overlaps its stages in threads joined by bounded queues (OpenCV and ONNX Runtime release
the GIL): decoding -> detection and tracking (the detector runs every ``every`` frames, an IoU tracker
carries boxes between) -> cropping and inference, batched across frames -> writing, in frame order, with
per-face smoothing. Every output is written to a temporary file and renamed only when the video is
complete, so a crash or a bad input leaves no half-written file.
"""

import contextlib
import csv
import dataclasses
import json
import logging
import os
import queue
import re
import threading
import time

import numpy as np

from .detection import FaceTracker, ProbabilitySmoother
from .errors import FerEdgeError
from .faces import InputError
from .io_utils import atomic_output, atomic_write_text

log = logging.getLogger("fer_edge.video")

_END = object()
#: Undecodable frames in a row after which a file is taken to end there.
MAX_BAD_FRAMES = 50
#: Failed reads in a row after which a camera or stream is taken to have stopped.
MAX_LIVE_FAILURES = 20
#: Still-image extensions FFmpeg would open as one-frame videos.
STILL_IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclasses.dataclass
class VideoOptions:
    """How ``analyze_video`` works; every field has the default fer-video uses.

    Attributes:
        every: run the face detector every ``every`` frames and track boxes between.
        smoothing: per-face exponential smoothing of the probabilities (weight of the past, 0 = off).
        fmt: "csv" or "jsonl" rows.
        annotate: also write an annotated MP4.
        timeline: also write the emotion-timeline PNG (needs matplotlib).
        max_frames: stop after this many frames (None: the whole video; a camera runs until interrupted).
        progress: show a progress bar on stderr.
        min_hits, max_missed, iou_threshold: FaceTracker settings.
        queue_frames: frames buffered between two stages.
    """

    every: int = 5
    smoothing: float = 0.5
    fmt: str = "csv"
    annotate: bool = False
    timeline: bool = True
    max_frames: int = None
    progress: bool = True
    min_hits: int = 2
    max_missed: int = 1
    iou_threshold: float = 0.3
    queue_frames: int = 16


# -- sources -------------------------------------------------------------------------------------------------
def source_name(source):
    """A file-name stem for a source: the video's stem, ``camera<N>``, or the stream URL's last part."""
    text = str(source)
    if text.isdigit():
        return f"camera{text}"
    if "://" in text:
        tail = text.split("://", 1)[1].split("?")[0].rstrip("/")
        stem = os.path.splitext(tail.rsplit("/", 1)[-1])[0] if "/" in tail else tail
        return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "stream"
    return os.path.splitext(os.path.basename(text))[0] or "video"


class VideoSource:
    """A video file, camera index or stream URL opened with OpenCV; ``frames()`` yields decodable frames."""

    def __init__(self, source, open_timeout_s=10.0):
        """Open the source.

        Args:
            source: a file path, a camera index (int or digit string) or a URL such as rtsp://host/stream.
            open_timeout_s: how long OpenCV may try to open or read a stream.

        Raises:
            InputError: missing, empty, unreadable, or not a video; a camera that cannot be opened.
        """
        import cv2

        self.source = source
        text = str(source)
        self.kind = "camera" if isinstance(source, int) or text.isdigit() else ("stream" if "://" in text else "file")
        self.name = source_name(source)
        ms = int(open_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        if self.kind == "file":
            if not os.path.exists(text):
                raise InputError(f"{text}: no such file")
            if not os.path.isfile(text):
                raise InputError(f"{text}: not a file")
            if os.path.getsize(text) == 0:
                raise InputError(f"{text}: file is empty")
            if not os.access(text, os.R_OK):
                raise InputError(f"{text}: permission denied")
            if os.path.splitext(text)[1].lower() in STILL_IMAGES:
                raise InputError(f"{text}: an image, not a video (use Runtime.detect on images)")
            self.cap = cv2.VideoCapture(text, cv2.CAP_ANY, params)
            if not self.cap.isOpened():
                raise InputError(f"{text}: not a video OpenCV can decode (corrupt, truncated or another kind of file)")
            fourcc = int(self.cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little", signed=False)
            if fourcc == b"ansi":
                # FFmpeg's tty demuxer renders any .txt file as frames of text.
                self.cap.release()
                raise InputError(f"{text}: a text file, not a video")
        elif self.kind == "camera":
            self.cap = cv2.VideoCapture(int(text))
            if not self.cap.isOpened():
                raise InputError(f"camera {text} cannot be opened (no such device, or it is busy)")
        else:
            self.cap = cv2.VideoCapture(text, cv2.CAP_ANY, params)
            if not self.cap.isOpened():
                raise InputError(f"stream {text} cannot be opened")
        self.live = self.kind != "file"
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not np.isfinite(self.fps) or self.fps <= 0 or self.fps > 1000:
            self.fps = 0.0
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        # Cameras report no length; a recorded stream (http://.../clip.mp4) may.
        self.frame_count = int(count) if self.kind != "camera" and np.isfinite(count) and 0 < count < 2**31 else None
        self.width = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.skipped = 0
        self.decoded = 0

    def frames(self, stop):
        """Yield (index, time_s, frame) for every decodable frame until the end or ``stop`` is set.

        A frame that fails to decode is logged and skipped. For files, index and time come from the
        frame's timestamp, so they stay right across skipped frames (FFmpeg drops some corrupt frames
        without reporting a failed read).

        Args:
            stop: threading.Event that ends the loop early.
        """
        import cv2

        last, bad, start = -1, 0, time.monotonic()
        while not stop.is_set():
            ok, frame = self.cap.read()
            if ok and frame is not None and frame.size:
                bad = 0
                index, t = last + 1, None
                if self.kind == "camera":
                    t = time.monotonic() - start
                else:
                    ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
                    if self.fps and np.isfinite(ms) and ms >= 0:
                        index, t = max(last + 1, int(round(ms * self.fps / 1000.0))), ms / 1000.0
                    elif self.fps:
                        t = index / self.fps
                    else:
                        t = time.monotonic() - start
                if index > last + 1:
                    self._skip(last + 1, index - 1)
                last = index
                self.decoded += 1
                yield index, t, frame
                continue
            bad += 1
            if self.kind == "file":
                more = self.frame_count is not None and last + 1 < self.frame_count and bad <= MAX_BAD_FRAMES
                if not more:
                    if self.frame_count is not None and self.decoded and last + 1 < self.frame_count:
                        self._skip(last + 1, self.frame_count - 1)
                    return
            else:
                if self.frame_count is not None and last + 1 >= self.frame_count:
                    return  # a recorded stream that has ended
                if bad > MAX_LIVE_FAILURES:
                    if self.decoded == 0:
                        raise InputError(f"{self.kind} {self.source} opened but gave no frame")
                    log.warning("%s: no frame in %d reads; stopping", self.source, bad)
                    return
                time.sleep(0.05)

    def _skip(self, first, last):
        self.skipped += last - first + 1
        what = f"frame {first}" if first == last else f"frames {first}-{last}"
        log.warning("%s: %s could not be decoded; skipped", self.source, what)

    def describe(self):
        """Source facts for the summary."""
        return {"source": str(self.source), "kind": self.kind, "width": self.width, "height": self.height,
                "fps": self.fps or None, "frame_count": self.frame_count}

    def release(self):
        """Close the capture."""
        self.cap.release()


# -- the pipeline --------------------------------------------------------------------------------------------
class _Stages:
    """Threads joined by bounded queues; the first error stops them all and is re-raised by ``check``."""

    def __init__(self):
        self.stop = threading.Event()   # abort: an error somewhere, or the caller gave up
        self.drain = threading.Event()  # stop reading new frames but finish the ones in flight
        self.error = None
        self.threads = []

    def start(self, name, fn, *args):
        def body():
            try:
                fn(*args)
            except BaseException as exc:  # handed to the main thread, which re-raises it
                if self.error is None:
                    self.error = exc
                self.stop.set()
        th = threading.Thread(target=body, name=f"fer-video-{name}", daemon=True)
        th.start()
        self.threads.append(th)

    def put(self, q, item):
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def get(self, q):
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                self.check()
                if self.stop.is_set():
                    raise FerEdgeError("video pipeline stopped")

    def check(self):
        if self.error is not None:
            raise self.error

    def join(self):
        self.stop.set()
        for th in self.threads:
            th.join(timeout=30)


@dataclasses.dataclass
class _Frame:
    index: int
    time_s: float
    frame: np.ndarray
    tracks: list = None
    probs: np.ndarray = None


def _decode(stages, src, options, out_q):
    n = 0
    for index, t, frame in src.frames(stages.drain):
        if options.max_frames is not None and n >= options.max_frames:
            break
        if not stages.put(out_q, _Frame(index, t, frame)):
            return
        n += 1
    stages.put(out_q, _END)


def _track(stages, tracker, in_q, out_q):
    while True:
        item = stages.get(in_q)
        if item is _END:
            stages.put(out_q, _END)
            return
        item.tracks = [(tid, box.copy()) for tid, box in tracker.update(item.frame)]
        if not stages.put(out_q, item):
            return


def _infer(stages, runtime, keep_frames, max_batch_frames, in_q, out_q):
    done = False
    while not done:
        batch = [stages.get(in_q)]
        if batch[0] is _END:
            break
        faces = len(batch[0].tracks)
        # Take whatever has queued up meanwhile: batches grow by themselves when inference is the bottleneck.
        while faces < runtime.batch_size and len(batch) < max_batch_frames:
            try:
                item = in_q.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                done = True
                break
            batch.append(item)
            faces += len(item.tracks)
        work = [it for it in batch if it.tracks]
        if work:
            probs = runtime._classify([(it.frame, np.array([b for _, b in it.tracks])) for it in work])
            pos = 0
            for it in work:
                it.probs = probs[pos:pos + len(it.tracks)]
                pos += len(it.tracks)
        for it in batch:
            if not keep_frames:
                it.frame = None
            if not stages.put(out_q, it):
                return
    stages.put(out_q, _END)


# -- outputs -------------------------------------------------------------------------------------------------
#: BGR colours of the FER2013 classes in plots and annotations; other class lists get evenly spaced hues.
FER_COLORS = {"angry": (40, 40, 220), "disgust": (60, 150, 60), "fear": (160, 60, 140), "happy": (40, 200, 250),
              "sad": (200, 120, 40), "surprise": (40, 140, 250), "neutral": (170, 170, 170)}


def _colors(n, classes=None):
    import cv2

    if classes is not None and all(c in FER_COLORS for c in classes):
        return [FER_COLORS[c] for c in classes]
    hsv = np.stack([np.linspace(0, 179, n, endpoint=False), np.full(n, 200), np.full(n, 255)], 1).astype(np.uint8)
    return [tuple(int(c) for c in bgr) for bgr in cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0]]


def _bgr(frame):
    import cv2

    return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)


def annotate_frame(frame, rows, classes, colors):
    """Draw each face's box and ``label score`` on a copy-free BGR frame (modified in place)."""
    import cv2

    for r in rows:
        x, y, w, h = r["x"], r["y"], r["w"], r["h"]
        color = colors[classes.index(r["label"])]
        cv2.rectangle(frame, (x, y), (x + w, y + h), color, 2)
        text = f"{r['face']}: {r['label']} {r['score']:.2f}"
        scale = max(0.4, min(1.0, w / 160))
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y - th - 6, 0)
        cv2.rectangle(frame, (x, top), (x + tw + 4, top + th + 6), color, -1)
        cv2.putText(frame, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return frame


def write_timeline(path, times, probs, classes, title):
    """Save a stacked-area plot of the mean class probabilities of the faces over time.

    Args:
        path: PNG file (written atomically).
        times: (T,) seconds of the frames that had a face.
        probs: (T, C) mean probabilities in those frames.
        classes: C class names.
        title: plot title.

    Returns:
        True, or False when matplotlib is not installed (nothing written).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(10, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = [tuple(c / 255 for c in bgr[::-1]) for bgr in _colors(len(classes), classes)]
    if len(times):
        ax.stackplot(np.asarray(times), np.asarray(probs).T, labels=classes, colors=colors, alpha=0.9)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_xlim(0, max(float(times[-1]) if len(times) else 0.0, 1e-3))
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mean probability")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_output(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    return True


@contextlib.contextmanager
def _video_writer(path, fps, size):
    """An OpenCV mp4v writer whose file appears at ``path`` only when the block succeeds."""
    import cv2

    with atomic_output(path, ".mp4") as tmp:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        try:
            if not writer.isOpened():
                raise FerEdgeError(f"OpenCV cannot write an mp4 video to {os.path.dirname(path) or '.'}")
            yield writer
        finally:
            writer.release()


class _RowWriter:
    def __init__(self, fh, fmt, classes):
        self.fmt, self.fh, self.classes = fmt, fh, list(classes)
        self.columns = ["frame", "time_s", "face", "x", "y", "w", "h", "label", "score"] + self.classes
        if fmt == "csv":
            self.csv = csv.writer(fh, lineterminator="\n")
            self.csv.writerow(self.columns)

    def write(self, row):
        if self.fmt == "csv":
            self.csv.writerow([row["frame"], f"{row['time_s']:.3f}", row["face"], row["x"], row["y"], row["w"],
                               row["h"], row["label"], f"{row['score']:.4f}"] +
                              [f"{row[c]:.4f}" for c in self.classes])
        else:
            out = {k: row[k] for k in self.columns}
            out["time_s"] = round(out["time_s"], 3)
            self.fh.write(json.dumps(out) + "\n")


def output_paths(out_dir, name, options):
    """The files ``analyze_video`` writes for a source named ``name``.

    Returns:
        dict kind -> path, with kinds rows, summary, and when asked, timeline and annotated.
    """
    base = os.path.join(out_dir, name)
    paths = {"rows": f"{base}.{options.fmt}", "summary": f"{base}.json"}
    if options.timeline:
        paths["timeline"] = f"{base}.png"
    if options.annotate:
        paths["annotated"] = f"{base}.annotated.mp4"
    return paths


def analyze_video(runtime, source, out_dir, options=None, name=None):
    """Run the expression pipeline over one video and write its outputs.

    Args:
        runtime: a fer_edge.Runtime with a detector.
        source: video file, camera index or stream URL.
        out_dir: output folder (created).
        options: VideoOptions (None: defaults).
        name: output file stem (None: from the source).

    Returns:
        The summary dict (also written to ``<out_dir>/<name>.json``).

    Raises:
        InputError: the source cannot be opened or yields no frame; nothing is written then.
    """
    options = options or VideoOptions()
    if options.fmt not in ("csv", "jsonl"):
        raise FerEdgeError(f"format must be csv or jsonl, got {options.fmt!r}")
    if runtime.detector is None:
        raise FerEdgeError("analyze_video needs a Runtime with a face detector (detector='haar' or 'yunet:PATH')")
    if options.max_frames is not None and options.max_frames < 1:
        raise FerEdgeError(f"max_frames must be >= 1, got {options.max_frames}")
    tracker = FaceTracker(runtime.detector, every=options.every, iou_threshold=options.iou_threshold,
                          max_missed=options.max_missed, min_hits=options.min_hits)
    smoother = ProbabilitySmoother(options.smoothing)
    src = VideoSource(source)
    name = name or src.name
    paths = output_paths(out_dir, name, options)
    classes = list(runtime.classes)
    try:
        return _run(runtime, src, tracker, smoother, options, paths, classes, name)
    finally:
        src.release()


def _run(runtime, src, tracker, smoother, options, paths, classes, name):
    from tqdm import tqdm

    stages = _Stages()
    qsize = max(2, int(options.queue_frames))
    q_dec, q_trk, q_out = queue.Queue(qsize), queue.Queue(qsize), queue.Queue(4 * qsize)
    frame_bytes = max(1, src.width * src.height * 3)
    # Bound the frames one inference batch holds: about 256 MB of frames at most.
    max_batch_frames = int(min(runtime.batch_size, max(1, (256 << 20) // frame_bytes)))
    total = src.frame_count if options.max_frames is None else min(src.frame_count or options.max_frames,
                                                                     options.max_frames)
    colors = _colors(len(classes), classes)
    stats = {"frames": 0, "frames_with_face": 0, "rows": 0, "tracks": set(), "label_counts": np.zeros(len(classes)),
             "prob_sum": np.zeros(len(classes))}
    times, frame_probs = [], []
    interrupted = False
    start = time.perf_counter()
    with contextlib.ExitStack() as outputs:
        rows_tmp = outputs.enter_context(atomic_output(paths["rows"], "." + options.fmt))
        fh = outputs.enter_context(open(rows_tmp, "w", encoding="utf-8", newline=""))
        rows = _RowWriter(fh, options.fmt, classes)
        writer = None
        bar = outputs.enter_context(tqdm(total=total, unit="frame", desc=name, disable=not options.progress,
                                         leave=False, dynamic_ncols=True))
        stages.start("decode", _decode, stages, src, options, q_dec)
        stages.start("track", _track, stages, tracker, q_dec, q_trk)
        stages.start("infer", _infer, stages, runtime, options.annotate, max_batch_frames, q_trk, q_out)
        try:
            while True:
                try:
                    item = stages.get(q_out)
                except KeyboardInterrupt:
                    if not src.live:
                        raise
                    # A camera or stream is stopped by Ctrl-C: finish the frames in flight and keep the outputs.
                    interrupted = True
                    stages.drain.set()
                    continue
                if item is _END:
                    break
                frame_rows = []
                ids = []
                for (tid, box), p in zip(item.tracks, item.probs if item.probs is not None else []):
                    p = smoother.update(tid, p)
                    top = int(np.argmax(p))
                    x, y, w, h = (int(round(v)) for v in box)
                    row = {"frame": item.index, "time_s": item.time_s, "face": tid, "x": x, "y": y, "w": w, "h": h,
                           "label": classes[top], "score": float(p[top])}
                    row.update({c: float(v) for c, v in zip(classes, p)})
                    rows.write(row)
                    frame_rows.append(row)
                    ids.append(tid)
                    stats["label_counts"][top] += 1
                    stats["prob_sum"] += p
                smoother.keep(ids)
                stats["frames"] += 1
                if frame_rows:
                    stats["frames_with_face"] += 1
                    stats["rows"] += len(frame_rows)
                    stats["tracks"].update(ids)
                    times.append(item.time_s)
                    frame_probs.append(np.mean([[r[c] for c in classes] for r in frame_rows], axis=0))
                if options.annotate:
                    frame = item.frame if item.frame.ndim == 3 else _bgr(item.frame)
                    if writer is None:
                        # Sized from the first frame: a stream may not report its size before decoding.
                        writer = outputs.enter_context(_video_writer(paths["annotated"], src.fps or 25.0,
                                                                     (frame.shape[1], frame.shape[0])))
                    writer.write(annotate_frame(frame, frame_rows, classes, colors))
                bar.update(1)
            stages.check()
        finally:
            stages.join()
        stages.check()
        elapsed = time.perf_counter() - start
        if stats["frames"] == 0:
            raise InputError(f"{src.source}: no frame could be decoded")
        fh.flush()
        summary = _summary(runtime, src, options, paths, classes, stats, elapsed, interrupted)
        if options.timeline:
            title = f"{name}: {stats['frames_with_face']}/{stats['frames']} frames with a face"
            if not write_timeline(paths["timeline"], times, frame_probs, classes, title):
                summary["outputs"]["timeline"] = None
                summary["notes"].append("timeline PNG skipped: matplotlib is not installed "
                                        "(pip install 'fer_edge[train]' or matplotlib)")
                log.warning("%s: %s", name, summary["notes"][-1])
        atomic_write_text(paths["summary"], json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(runtime, src, options, paths, classes, stats, elapsed, interrupted):
    rows = stats["rows"]
    info = runtime.info()
    return {
        "source": src.describe(),
        "frames": stats["frames"],
        "frames_with_face": stats["frames_with_face"],
        "face_fraction": stats["frames_with_face"] / max(stats["frames"], 1),
        "faces": rows,
        "tracks": len(stats["tracks"]),
        "skipped_frames": src.skipped,
        "emotion_shares": {c: (float(n) / rows if rows else 0.0) for c, n in zip(classes, stats["label_counts"])},
        "mean_probabilities": {c: (float(s) / rows if rows else 0.0) for c, s in zip(classes, stats["prob_sum"])},
        "fps": stats["frames"] / elapsed if elapsed > 0 else None,
        "processing_s": elapsed,
        "interrupted": interrupted,
        "options": {"every": options.every, "smoothing": options.smoothing, "batch": runtime.batch_size,
                    "format": options.fmt, "min_hits": options.min_hits, "max_missed": options.max_missed},
        "runtime": {k: info[k] for k in ("model", "backend", "providers", "precision", "tta", "detector")},
        "outputs": {k: os.path.basename(v) for k, v in paths.items()},
        "notes": [],
    }
