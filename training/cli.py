"""fer-train: train a FER model on FER2013 (needs the ``train`` extra)."""

import argparse
import sys

from fer_edge.cli_common import run_main

from .balance import STRATEGIES


# The registry (training.models) imports torch, and --help must work without it; a test keeps this in step.
MODEL_NAMES = ("resnet_edge", "vgg_edge", "vgg_half", "vgg_paper", "vgg_tiny")


def _defaults():
    # Mirrors training.engine.TrainConfig, which imports torch: --help must work without it.
    return {
        "model": "vgg_edge", "out": None, "epochs": 60, "batch_size": 128, "optimizer": "sgd", "lr": 0.05,
        "weight_decay": 5e-4, "schedule": "onecycle", "label_smoothing": 0.1, "balance": "none",
        "seed": 0, "threads": 0, "device": "auto", "eval_tta": "flip", "max_train_samples": 0,
        "distill_alpha": 0.5, "distill_temperature": 4.0,
    }


def build_parser():
    d = _defaults()
    p = argparse.ArgumentParser(
        prog="fer-train",
        description="Train a FER2013 model; checkpoints every epoch, best epoch chosen on PublicTest.",
    )
    p.add_argument("--model", default=d["model"],
                   help=f"registered model name: {', '.join(MODEL_NAMES)} (default: %(default)s)")
    p.add_argument("--data", required=False, help="fer2013.csv or the image-folder root (required unless --list-models)")
    p.add_argument("--out", default=d["out"], help="run folder (default: runs/<model>)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"total epochs (default: {d['epochs']}; on --resume, the run's own count)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="global batch size (default: %(default)s)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=d["optimizer"],
                   help="sgd is SGD with Nesterov momentum (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="(default: %(default)s)")
    p.add_argument("--schedule", choices=("onecycle", "cosine", "plateau", "constant"), default=d["schedule"],
                   help="learning-rate schedule (default: %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=d["label_smoothing"], help="(default: %(default)s)")
    p.add_argument("--balance", default=d["balance"],
                   choices=STRATEGIES,
                   help="class-imbalance strategy (default: %(default)s)")
    p.add_argument("--no-augment", action="store_true", help="disable training augmentation (default: augment)")
    p.add_argument("--no-amp", action="store_true",
                   help="train in float32 (default: bf16 autocast on CPU, mixed precision on CUDA)")
    p.add_argument("--seed", type=int, default=d["seed"], help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=d["threads"], help="torch CPU threads, 0 = torch default (default: %(default)s)")
    p.add_argument("--device", default=d["device"], help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    p.add_argument("--eval-tta", choices=("none", "flip", "tencrop"), default=d["eval_tta"],
                   help="test-time augmentation used to pick the best epoch on PublicTest (default: %(default)s)")
    p.add_argument("--max-train-samples", type=int, default=d["max_train_samples"],
                   help="train on a seeded subset of this size, 0 = all (default: %(default)s)")
    p.add_argument("--distill", default="",
                   help="teacher scores .npy for the training images, probabilities (fer-eval --split train "
                        "--save-scores) or logits (default: none)")
    p.add_argument("--distill-alpha", type=float, default=d["distill_alpha"], help="(default: %(default)s)")
    p.add_argument("--distill-temperature", type=float, default=d["distill_temperature"], help="(default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt (default: off)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="leave after this many epochs in this call; --resume continues (default: run to the end)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: show it)")
    p.add_argument("--export", metavar="ONNX", default=None,
                   help="after training, write the best epoch as ONNX with metadata (default: no export)")
    p.add_argument("--list-models", action="store_true", help="print the registered models and exit")
    return p


def config_from_args(args):
    """The TrainConfig that parsed fer-train options describe (scripts/device_train.py reuses it)."""
    from .engine import TrainConfig

    return TrainConfig(
        model=args.model, data=args.data or "", out=args.out or f"runs/{args.model}",
        epochs=args.epochs or _defaults()["epochs"],
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, label_smoothing=args.label_smoothing, balance=args.balance,
        augment=not args.no_augment, amp=not args.no_amp, seed=args.seed, threads=args.threads,
        device=args.device, eval_tta=args.eval_tta, max_train_samples=args.max_train_samples,
        distill=args.distill, distill_alpha=args.distill_alpha, distill_temperature=args.distill_temperature,
        progress=not args.no_progress,
    )


def _run(args):
    from fer_edge.errors import require

    require("torch", "train")
    from .engine import train
    from .models import count_macs, count_parameters, create_model, list_models

    if args.list_models:
        for name in list_models():
            m = create_model(name)
            print(f"{name:<12} {count_parameters(m) / 1e6:7.2f} M parameters {count_macs(m) / 1e6:8.1f} M MACs")
        return 0
    if args.model not in list_models():
        raise SystemExit(f"fer-train: error: unknown model {args.model!r}; known models: {', '.join(list_models())}")
    if not args.data and not args.resume:
        raise SystemExit("fer-train: error: --data is required")
    cfg = config_from_args(args)
    history = train(cfg, resume=args.resume, stop_after=args.stop_after, epochs=args.epochs)
    best = max(history, key=lambda r: r.get("public_top1", -1)) if history else None
    if best is not None and "public_top1" in best:
        print(f"best epoch {best['epoch'] + 1}: PublicTest top-1 {best['public_top1'] * 100:.2f}% "
              f"weighted {best['public_weighted_acc'] * 100:.2f}% ({cfg.eval_tta}); checkpoint {cfg.out}/best.pt")
    if args.export:
        from export.onnx_export import export_checkpoint

        export_checkpoint(f"{cfg.out}/best.pt", args.export)
        print(f"wrote {args.export}")
    return 0


def main(argv=None):
    """Entry point of fer-train; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_main("fer-train", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
