"""Train one model on a lent GPU machine inside a fixed time budget, and bring its best epoch back.

The device tool lends an H100/H200 for about 15 minutes a session, runs one command of at most 10,
copies the repository there (64 MiB at most, so FER2013 travels as a pack) and returns at most 8 files
of 16 MiB. This script fits the paper's recipe into that box:

1. a probe run of a few epochs measures the seconds per whole epoch on that machine (training,
   evaluation and checkpoints; the first epoch, with cuDNN's autotuning, is left out);
2. the real run gets as many epochs as fit in what is left of ``--budget-s`` (at most ``--max-epochs``;
   the one-cycle schedule needs its length up front, so it cannot simply be cut off);
3. the best epoch's weights go to ``--out`` as float16 parts with a manifest
   (``training.checkpoint_parts``), with the run's log and ``device_run.json`` (the plan, the machine
   and every epoch's metrics).

Here, before the call (the pack is about 55 MiB; the tracked files, 7.1 MiB now, must stay under 8.5):

    python -m fer_edge.dataset_pack ../shared/data/fer2013 runs/device/fer2013.npz.xz

The call (device tool ``run``, carry ``["runs/device"]``, timeout_s 570):

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 scripts/device_train.py --data runs/device/fer2013.npz.xz \\
        --out $OUT --budget-s 480 -- --model vgg_paper --lr 0.03 --seed 0

Back here, with the folder the tool names:

    python -m training.checkpoint_parts join FILES_AT/best.parts.json runs/paper_gpu/best.pt
    fer-eval runs/paper_gpu/best.pt --data ../shared/data/fer2013
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # the device machine runs from a bare copy of the repository, not installed

# Parts, manifest, log and device_run.json must fit the tool's 8 files of 16 MiB, 64 MiB together.
MAX_RETURN_FILES = 8
MAX_RETURN_BYTES = 60 * 2**20
SAFETY = 1.1  # epochs of the real run take a little longer than the probe's (checkpoints grow, clocks vary)


def plan_epochs(seconds_left, epoch_seconds, max_epochs):
    """How many epochs of ``epoch_seconds`` fit in ``seconds_left`` (0 if none; never above ``max_epochs``)."""
    if epoch_seconds <= 0:
        raise ValueError(f"epoch_seconds must be positive, got {epoch_seconds}")
    return max(0, min(max_epochs, math.floor(seconds_left / (epoch_seconds * SAFETY))))


def build_parser():
    p = argparse.ArgumentParser(
        prog="scripts/device_train.py",
        description="Train inside a time budget on a lent GPU and write the best epoch as float16 parts.",
        epilog="Options after -- go to fer-train (--model, --lr, --seed, --batch-size ...).")
    p.add_argument("--data", required=True, help="FER2013 as a pack (.npz.xz) or any form fer-train reads")
    p.add_argument("--out", required=True, help="folder for the files to bring back (the tool's $OUT)")
    p.add_argument("--budget-s", type=float, required=True,
                   help="seconds from this script's start to the written parts")
    p.add_argument("--max-epochs", type=int, default=300, help="never more epochs than this (default: 300, the paper's)")
    p.add_argument("--probe-epochs", type=int, default=3, help="epochs of the probe run (default: %(default)s)")
    p.add_argument("--reserve-s", type=float, default=30.0,
                   help="seconds kept for writing the parts and the log (default: %(default)s)")
    p.add_argument("--work", default=None,
                   help="folder for checkpoints (default: a new folder in /dev/shm if it has 2 GiB free, else in the "
                        "system temp folder)")
    return p


def _train_config(train_args, data, out, epochs):
    from training.cli import build_parser as train_parser, config_from_args

    cfg = config_from_args(train_parser().parse_args(["--data", data, *train_args]))
    cfg.out, cfg.epochs, cfg.progress = out, epochs, False
    return cfg


def _fast_scratch():
    """/dev/shm when it has room for the checkpoints (a container's may hold only 64 MB), else the temp folder."""
    try:
        return "/dev/shm" if shutil.disk_usage("/dev/shm").free > 2 * 2**30 else None
    except OSError:
        return None


def _float16_bytes(model_name):
    from training.models import count_parameters, create_model

    return 2 * count_parameters(create_model(model_name))


def run(args, train_args):
    """The probe, the planned run and the parts; returns the summary written to device_run.json."""
    from training.checkpoint_parts import DEFAULT_PART_BYTES

    start = time.time()
    probe_cfg = _train_config(train_args, args.data, "", args.probe_epochs)
    weight_bytes = _float16_bytes(probe_cfg.model)
    if math.ceil(weight_bytes / DEFAULT_PART_BYTES) + 3 > MAX_RETURN_FILES or weight_bytes > MAX_RETURN_BYTES:
        raise SystemExit(f"device_train: error: {probe_cfg.model}'s float16 weights ({weight_bytes / 2**20:.0f} MiB) "
                         "do not fit the files the device tool returns")
    if args.probe_epochs < 2:
        raise SystemExit("device_train: error: --probe-epochs must be at least 2 (the first one warms up)")
    made_work = args.work is None
    work = args.work or tempfile.mkdtemp(prefix="fer_edge_device_", dir=_fast_scratch())
    os.makedirs(args.out, exist_ok=True)
    try:
        return _probe_plan_train(args, train_args, probe_cfg, work, start)
    finally:
        # Checkpoints of a big model fill /dev/shm (memory): never leave them behind, also after an error.
        for sub in ("probe", "run"):
            shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
        if made_work:
            shutil.rmtree(work, ignore_errors=True)


def _probe_plan_train(args, train_args, probe_cfg, work, start):
    import torch

    from fer_edge.io_utils import atomic_write_text
    from training.checkpoint_parts import write_parts
    from training.engine import train

    probe_cfg.out = os.path.join(work, "probe")
    probe_start = time.time()
    epoch_ends = []
    train(probe_cfg, after_epoch=lambda row: epoch_ends.append(time.time()))
    # Whole epochs, checkpoints and curves included; the first one also warms cuDNN up.
    epoch_s = max(later - earlier for earlier, later in zip(epoch_ends, epoch_ends[1:]))
    setup_s = max(0.0, epoch_ends[0] - probe_start - epoch_s)
    seconds_left = args.budget_s - (time.time() - start) - setup_s - args.reserve_s
    epochs = plan_epochs(seconds_left, epoch_s, args.max_epochs)
    plan = {"epoch_seconds_probe": epoch_s, "setup_seconds": setup_s, "seconds_left": seconds_left,
            "epochs": epochs, "budget_seconds": args.budget_s}
    print(f"device_train: plan {json.dumps(plan)}", flush=True)
    if epochs < 1:
        raise SystemExit(f"device_train: error: no whole epoch fits in {args.budget_s:.0f} s "
                         f"({epoch_s:.1f} s per epoch, {setup_s:.0f} s setup)")

    cfg = _train_config(train_args, args.data, os.path.join(work, "run"), epochs)
    run_start = time.time()
    history = train(cfg)
    manifest = write_parts(os.path.join(cfg.out, "best.pt"), args.out)
    shutil.copy(os.path.join(cfg.out, "train.log"), os.path.join(args.out, "train.log"))
    best = max(history, key=lambda r: r["public_top1"])
    summary = {
        "config": dataclasses.asdict(cfg), "plan": plan, "run_seconds": time.time() - run_start,
        "total_seconds": time.time() - start, "manifest": os.path.basename(manifest),
        "best_epoch": best["epoch"] + 1, "best_public_top1": best["public_top1"],
        "machine": {"torch": torch.__version__, "python": platform.python_version(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "history": history,
    }
    atomic_write_text(os.path.join(args.out, "device_run.json"), json.dumps(summary, indent=1))
    print(f"device_train: {epochs} epochs in {summary['run_seconds']:.0f} s; best epoch {best['epoch'] + 1}: "
          f"PublicTest top-1 {best['public_top1'] * 100:.2f}% ({cfg.eval_tta}); parts in {args.out}", flush=True)
    return summary


def main(argv=None):
    """Entry point; options after ``--`` go to fer-train. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    run(args, argv[split + 1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
