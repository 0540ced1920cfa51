"""fer-export: turn a checkpoint or an FP32 ONNX file into checked FP32 / FP16 / INT8 ONNX files,
TensorRT engines and a Triton model repository.

Every file is checked before it is written (atomically): the FP32 ONNX against PyTorch at batch 1 and 64,
the FP16 ONNX by its argmax agreement with FP32 on PublicTest, the INT8 ONNX by walking its Q/DQ graph
and by its PublicTest accuracy, which goes into its metadata. Imports of torch, onnx, onnxruntime and
tensorrt happen inside ``_run`` so that ``fer-export --help`` needs none of them.
"""

import argparse
import os
import sys

from fer_edge.cli_common import run_main
from fer_edge.errors import FerEdgeError

_TARGETS = ("tensorrt", "cpu")
_METHODS = ("minmax", "entropy", "percentile")
_DEFAULT_PROFILE = "1,64,256"
#: A top-1 drop above this many points prints a warning (the issue's target for both flavours).
_MAX_DROP_POINTS = 1.0


class UsageError(FerEdgeError, ValueError):
    """Options that do not go together."""


def build_parser():
    """The argparse parser of fer-export."""
    p = argparse.ArgumentParser(
        prog="fer-export",
        description="Export a fer_edge model: checked FP32 ONNX, FP16 and calibrated INT8 ONNX, TensorRT "
                    "engines, a Triton model repository. MODEL is a fer-train checkpoint (.pt) or an FP32 ONNX "
                    "file with fer_edge metadata (quantized and built into engines without torch).",
    )
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="checkpoint (.pt) or FP32 ONNX file; with --ensemble it is the first member (default: none)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the FP32 ONNX file to write; FP16/INT8 files are named after it (required)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of checkpoint exports (default: %(default)s)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torch.onnx exporter for checkpoints; dynamo needs opset >= 18 (default: %(default)s)")
    g = p.add_argument_group("FP16")
    g.add_argument("--fp16", action="store_true",
                   help="also write OUT_fp16.onnx (float32 inputs/outputs), checked for >= 99.9%% argmax "
                        "agreement with FP32 on PublicTest (default: off)")
    g.add_argument("--fp16-out", metavar="PATH", default=None, help="FP16 file (default: OUT_fp16.onnx)")
    g = p.add_argument_group("INT8")
    g.add_argument("--int8", action="store_true",
                   help="also write a statically quantized Q/DQ model, OUT_int8.onnx (tensorrt) or "
                        "OUT_int8_cpu.onnx (cpu); needs --calib (default: off)")
    g.add_argument("--calib", metavar="DATA", default=None,
                   help="FER2013 (fer2013.csv, its folder or the image-folder root): calibration images come "
                        "from its training split (default: none)")
    g.add_argument("--target", choices=_TARGETS, default="tensorrt",
                   help="tensorrt: signed int8, symmetric, float bias, as TensorRT takes it; cpu: uint8 "
                        "activations for ONNX Runtime's fast CPU kernels (default: %(default)s)")
    g.add_argument("--calib-size", type=int, default=512,
                   help="class-balanced calibration sample, rounded down to a multiple of 7 (default: %(default)s)")
    g.add_argument("--calib-method", choices=_METHODS, default="minmax",
                   help="how activation ranges are calibrated (default: %(default)s)")
    g.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration sample (default: %(default)s)")
    g.add_argument("--calib-batch", type=int, default=64, help="calibration batch size (default: %(default)s)")
    g.add_argument("--int8-out", metavar="PATH", default=None,
                   help="INT8 file (default: OUT_int8.onnx, or OUT_int8_cpu.onnx for --target cpu)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--data", metavar="DATA", default=None,
                   help="FER2013 whose PublicTest split measures FP16 agreement and the INT8 accuracy drop "
                        "(default: the --calib dataset)")
    g.add_argument("--eval-tta", choices=("none", "flip", "tencrop"), default="none",
                   help="test-time augmentation of those measurements (default: %(default)s)")
    g.add_argument("--no-eval", action="store_true", help="skip the PublicTest measurements (default: measure)")
    g = p.add_argument_group("TensorRT (needs the gpu extra and an NVIDIA GPU)")
    g.add_argument("--engine", metavar="OUT.engine", default=None,
                   help="also build a TensorRT engine (INT8 with --int8, else FP16 with --fp16, else FP32) and "
                        "write OUT.engine.json beside it (default: no engine)")
    g.add_argument("--dla-core", type=int, default=None, metavar="N",
                   help="build for DLA core N with GPU fallback; needs --fp16 or --int8 (default: GPU)")
    g.add_argument("--profile", default=_DEFAULT_PROFILE, metavar="MIN,OPT,MAX",
                   help="batch sizes of the optimisation profile; DLA uses OPT only (default: %(default)s)")
    g.add_argument("--workspace-mib", type=int, default=1024,
                   help="TensorRT workspace limit in MiB (default: %(default)s)")
    g.add_argument("--timing-cache", metavar="PATH", default=None,
                   help="timing cache read before and written after the build (default: OUT.engine.timing)")
    g.add_argument("--calib-cache", metavar="PATH", default=None,
                   help="TensorRT 10 INT8 calibration cache written by an IInt8EntropyCalibrator2 from the same "
                        "batches, for DLA builds (default: OUT.engine.calib when --int8 on TensorRT 10)")
    g = p.add_argument_group("Triton")
    g.add_argument("--triton-repo", metavar="DIR", default=None,
                   help="write a Triton model repository with every exported model (default: none)")
    g.add_argument("--triton-name", default=None,
                   help="base model name in the repository (default: the file name of OUT)")
    g.add_argument("--triton-instances", type=int, default=1, help="instances per device (default: %(default)s)")
    g.add_argument("--triton-max-batch", type=int, default=None,
                   help="Triton max_batch_size (default: the profile's MAX)")
    g = p.add_argument_group("ensembles")
    g.add_argument("--ensemble", nargs="+", metavar="M", default=None,
                   help="more members (checkpoints or ONNX files): MODEL and these become one ONNX graph that "
                        "averages their probabilities (default: no ensemble)")
    g.add_argument("--ensemble-weights", nargs="+", type=float, metavar="W", default=None,
                   help="one weight per member, normalised to sum 1 (default: plain mean)")
    return p


def _is_onnx(path):
    return str(path).lower().endswith(".onnx")


def _derived(out, suffix):
    stem = out[:-5] if out.lower().endswith(".onnx") else out
    return f"{stem}{suffix}.onnx"


def _parse_profile(text):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise UsageError(f"--profile takes MIN,OPT,MAX batch sizes with 1 <= MIN <= OPT <= MAX, got {text!r}")
    return values


def _validate(args):
    members = ([args.model] if args.model else []) + list(args.ensemble or [])
    if not members:
        raise UsageError("give MODEL (a checkpoint or an ONNX file), or --ensemble M1 M2 ...")
    if args.ensemble is not None and len(members) < 2:
        raise UsageError("an ensemble needs at least two members")
    if args.ensemble_weights is not None and args.ensemble is None:
        raise UsageError("--ensemble-weights needs --ensemble")
    if args.int8 and not args.calib:
        raise UsageError("--int8 needs --calib DATA (FER2013, whose training images calibrate the scales)")
    if args.dla_core is not None and not args.engine:
        raise UsageError("--dla-core needs --engine")
    if args.engine and args.int8 and args.target == "cpu":
        raise UsageError("--engine builds from the tensorrt INT8 flavour; drop --target cpu or --engine")
    if args.calib_size < 7 or args.calib_batch < 1:
        raise UsageError("--calib-size must be at least 7 (one face per class) and --calib-batch at least 1")
    for path in members:
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "No such file or directory", path)
    return members, _parse_profile(args.profile)


def _write_onnx(path, proto, label, log):
    from fer_edge.io_utils import atomic_write_bytes

    from .onnx_export import check_onnx

    data = check_onnx(proto, path)
    atomic_write_bytes(path, data)
    log(f"wrote {path} ({label}, {len(data) / 1e6:.2f} MB; onnx.checker full_check passed, no external data)")


def _fp32_model(args, members, log):
    """(proto, metadata) of the FP32 model, checked; prints the parity lines."""
    from . import ensemble as ens
    from .onnx_export import (parity_line, check_batch_consistency, check_onnx, export_checkpoint_model,
                              load_onnx)

    def load_member(path):
        if _is_onnx(path):
            proto, meta = load_onnx(path)
            if meta.precision != "fp32":
                raise UsageError(f"{path} is a {meta.precision} model; give the FP32 ONNX file or the checkpoint")
            check_onnx(proto, path)
            return proto, meta
        proto, meta, _ = export_checkpoint_model(path, opset=args.opset, log=log, exporter=args.exporter)
        return proto, meta

    if len(members) > 1:
        if not any(_is_onnx(m) for m in members):
            proto, meta, parity = ens.export_checkpoint_ensemble(members, args.ensemble_weights, args.opset,
                                                                  args.exporter)
            log(parity_line(parity, "the PyTorch ensemble", "probability"))
            return proto, meta
        loaded = [load_member(m) for m in members]
        protos, metas = [p for p, _ in loaded], [m for _, m in loaded]
        proto, meta = ens.merge_onnx(protos, metas, members, args.ensemble_weights)
        check_onnx(proto, "ensemble")
        parity = ens.compare_with_members(proto, protos, metas, args.ensemble_weights)
        meta.extra["export"]["ort_vs_members_max_abs"] = {str(k): v for k, v in parity.items()}
        from fer_edge.metadata import attach_to_onnx

        attach_to_onnx(proto, meta)
        log(parity_line(parity, "the members' weighted mean", "probability"))
        return proto, meta
    path = members[0]
    proto, meta = load_member(path)
    if _is_onnx(path):
        diffs = check_batch_consistency(proto, meta, source=path)
        log(f"{path}: ONNX file given, no PyTorch to compare with; batch 1 vs 64 consistency "
            + ", ".join(f"{d:.2e}" for d in diffs.values()))
    return proto, meta


class _PublicTest:
    """PublicTest faces and the FP32 model's scores on them, loaded once and only when needed."""

    def __init__(self, args, proto, meta, log):
        self.args, self.proto, self.meta, self.log = args, proto, meta, log
        self.data = None if args.no_eval else (args.data or args.calib)
        self.images = self.labels = self.report = self.scores = None

    def available(self):
        """True when there are PublicTest faces to measure on."""
        if self.images is None and self.data:
            from fer_edge.errors import DatasetError

            from .data import load_public_split

            try:
                self.images, self.labels = load_public_split(self.data)
            except DatasetError as exc:
                if self.args.data:
                    raise
                self.log(f"no PublicTest split beside the calibration data ({exc}); accuracy not measured")
                self.data = None
        return self.images is not None

    def fp32(self):
        """(report, scores) of the FP32 model."""
        if self.report is None:
            from .evaluate import evaluate, ort_session

            self.report, self.scores = evaluate(ort_session(self.proto), self.images, self.labels, self.meta,
                                                self.args.eval_tta)
        return self.report, self.scores

    def where(self):
        return f"PublicTest ({len(self.labels)} faces, TTA {self.args.eval_tta})"


def _export_fp16(args, proto, meta, public, log):
    """Write the FP16 model after checking its argmax agreement with FP32; returns (path, metadata)."""
    from fer_edge.metadata import attach_to_onnx, from_onnx_proto

    from .evaluate import ort_session, predict, run_batches
    from .fp16 import argmax_agreement, check_agreement, to_fp16
    from .onnx_export import random_faces

    path = args.fp16_out or _derived(args.output, "_fp16")
    p16 = to_fp16(proto, meta)
    m16 = from_onnx_proto(p16)
    s16 = ort_session(p16)
    if public.available():
        agreement = argmax_agreement(public.fp32()[1], predict(s16, public.images, m16, args.eval_tta))
        where = public.where()
    else:
        x = random_faces(512, meta, seed=7)
        agreement = argmax_agreement(run_batches(ort_session(proto), x), run_batches(s16, x))
        where = "512 random faces (PublicTest not measured: no --data/--calib, or --no-eval)"
    check_agreement(agreement, source=path)
    m16.metrics = dict(m16.metrics, fp16_argmax_agreement=agreement, fp16_agreement_on=where)
    attach_to_onnx(p16, m16)
    log(f"FP16 argmax agreement with FP32 on {where}: {agreement * 100:.2f}% (required >= 99.9%)")
    _write_onnx(path, p16, "FP16, float32 inputs/outputs", log)
    return path, m16


def _export_int8(args, proto, meta, public, log):
    """Calibrate, quantize, measure the PublicTest drop and write the INT8 model.

    Returns:
        (path, metadata, CalibrationSet).
    """
    from fer_edge.metadata import attach_to_onnx

    from .data import load_calibration_set
    from .evaluate import evaluate, ort_session
    from .quantize import quantize

    calib = load_calibration_set(args.calib, meta, args.calib_size, args.calib_seed, args.calib_batch)
    info = calib.info
    log(f"calibration: {info['images']} training faces ({info['per_class'][0]} per class, seed {args.calib_seed}), "
        f"{info['batches']} batches of {info['batch_size']}, method {args.calib_method}")
    q, qmeta = quantize(proto, meta, calib.batches, args.target, args.calib_method, info)
    desc = qmeta.extra["int8"]
    log(f"INT8 ({args.target} flavour): Q/DQ graph checked: activations {desc['activations']}; "
        f"weights {desc['weights']}; bias {desc['bias']}")
    if public.available():
        report, _ = public.fp32()
        qreport, _ = evaluate(ort_session(q), public.images, public.labels, qmeta, args.eval_tta)
        drop = (report["top1"] - qreport["top1"]) * 100
        qmeta.metrics = dict(qmeta.metrics, int8={
            "split": "public", "n": int(len(public.labels)), "tta": args.eval_tta, "runtime": "onnxruntime CPU",
            "fp32_top1": report["top1"], "int8_top1": qreport["top1"], "top1_drop_points": drop,
            "fp32_weighted_accuracy": report["weighted_accuracy"],
            "int8_weighted_accuracy": qreport["weighted_accuracy"]})
        log(f"PublicTest top-1 ({len(public.labels)} faces, TTA {args.eval_tta}): FP32 {report['top1'] * 100:.2f}%  "
            f"INT8 {qreport['top1'] * 100:.2f}%  drop {drop:+.2f} points")
        if drop > _MAX_DROP_POINTS:
            log(f"warning: the INT8 model loses more than {_MAX_DROP_POINTS} point; try --calib-method "
                "percentile, or a larger --calib-size")
    else:
        log("INT8 accuracy not measured (no PublicTest data: give --data, or drop --no-eval)")
    attach_to_onnx(q, qmeta)
    path = args.int8_out or _derived(args.output, "_int8" if args.target == "tensorrt" else "_int8_cpu")
    _write_onnx(path, q, f"INT8 Q/DQ, {args.target} flavour", log)
    return path, qmeta, calib


def _run(args):
    members, profile = _validate(args)
    log = print
    trt = gpu = None
    if args.engine:
        # Fail before any work when the engine cannot be built here.
        from .tensorrt_build import preflight

        trt, gpu = preflight()
        _engine_plan(args, trt)  # an impossible combination (DLA in FP32, TensorRT 8) fails here, not later
        log(f"TensorRT {trt.__version__} on {gpu['name']} (compute capability {gpu['compute_capability']})")

    proto, meta = _fp32_model(args, members, log)
    out = args.output
    if len(members) == 1 and _is_onnx(members[0]) and os.path.exists(out) and os.path.samefile(members[0], out):
        log(f"{out}: the FP32 ONNX file given is kept as it is")
    else:
        _write_onnx(out, proto, "FP32", log)
    written = {"fp32": (out, meta)}
    public = _PublicTest(args, proto, meta, log)
    if args.fp16:
        written["fp16"] = _export_fp16(args, proto, meta, public, log)
    calib = None
    if args.int8:
        path, qmeta, calib = _export_int8(args, proto, meta, public, log)
        written["int8"] = (path, qmeta)
    if args.engine:
        _build_engine(args, trt, gpu, profile, written, calib, log)
    if args.triton_repo:
        _write_triton(args, profile, written, log)
    return 0


def _engine_plan(args, trt):
    from . import tensorrt_build as tb

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    return tb.plan_build(tb.trt_major(trt), precision, args.dla_core, fp16_fallback=args.fp16)


def _build_engine(args, trt, gpu, profile, written, calib, log):
    from . import tensorrt_build as tb

    major = tb.trt_major(trt)
    plan = _engine_plan(args, trt)
    precision = plan.precision
    profile = tb.resolve_profile(profile, args.dla_core)
    engine = args.engine
    calib_cache = args.calib_cache or f"{engine}.calib"
    if args.int8 and major < 11:
        # The cache DLA builds (and trtexec --calib) take, from the batches ONNX Runtime calibrated with.
        fed = tb.write_calibration_cache(trt, _read(written["fp32"][0]), calib.batches, calib_cache, profile,
                                         args.workspace_mib)
        log(f"wrote {calib_cache} (TensorRT calibration cache, IInt8EntropyCalibrator2, {fed} batches)")
    calibrator = tb.make_calibrator(trt, calib.batches, calib_cache) if plan.calibrate else None
    onnx_path, meta = written[plan.onnx]
    if plan.calibrate:
        meta = written["int8"][1]
    timing = args.timing_cache or f"{engine}.timing"
    log(f"building {engine}: TensorRT {trt.__version__}, {precision} from {os.path.basename(onnx_path)}, "
        f"{'strongly typed' if plan.strongly_typed else 'flags ' + '+'.join(plan.flags or ('none',))}, "
        f"profile {profile}, {'DLA core ' + str(args.dla_core) if args.dla_core is not None else 'GPU'}")
    tb.build_engine(trt, gpu, plan, _read(onnx_path), os.path.basename(onnx_path), meta, engine, profile,
                    args.workspace_mib, timing, calibrator, log)
    log(f"wrote {engine} and {engine}.json; timing cache {timing}")
    written["engine"] = (engine, meta.replace(precision=precision))


def _read(path):
    with open(path, "rb") as fh:
        return fh.read()


def _write_triton(args, profile, written, log):
    from .triton import write_model

    base = args.triton_name or os.path.splitext(os.path.basename(args.output))[0]
    max_batch = args.triton_max_batch or profile[2]
    names = {"fp32": base, "fp16": f"{base}_fp16", "int8": f"{base}_int8", "engine": f"{base}_trt"}
    for key in ("fp32", "fp16", "int8", "engine"):
        if key not in written:
            continue
        path, meta = written[key]
        platform = "tensorrt_plan" if key == "engine" else "onnxruntime_onnx"
        # INT8 Q/DQ graphs run fast on ONNX Runtime's CPU kernels; the GPU route for INT8 is the engine.
        kind = "KIND_CPU" if key == "int8" else "KIND_GPU"
        mb = min(max_batch, profile[2]) if key == "engine" else max_batch
        write_model(args.triton_repo, names[key], path, platform, meta, mb, kind=kind, count=args.triton_instances)
        log(f"wrote Triton model {os.path.join(args.triton_repo, names[key])} ({platform}, {kind}, "
            f"max_batch_size {mb})")


def main(argv=None):
    """Entry point of fer-export; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_main("fer-export", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
