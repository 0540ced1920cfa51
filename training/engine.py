"""The training loop: data on the device, batched augmentation, checkpoints every epoch, resume.

One ``TrainConfig`` describes a run; ``train(cfg)`` runs it and returns the history. Under
``torchrun`` (WORLD_SIZE > 1) the same code trains with DistributedDataParallel: every rank draws
the same epoch permutation and takes its own slice of it; rank 0 evaluates and writes files.
"""

import csv
import dataclasses
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from fer_edge.constants import CLASS_NAMES
from fer_edge.metadata import ModelMetadata
from fer_edge.metrics import evaluate as evaluate_scores

from . import balance as balance_mod
from .augment import AugmentConfig, augment_batch, tta_views
from .distill import load_teacher_logits
from .models import count_macs, count_parameters, create_model


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint)."""

    model: str = "vgg_edge"
    data: str = ""
    out: str = "runs/vgg_edge"
    epochs: int = 60
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (Nesterov) or adamw
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "onecycle"  # onecycle, cosine, plateau, constant
    warmup_epochs: float = 2.0  # for cosine
    label_smoothing: float = 0.1
    balance: str = "none"
    augment: bool = True
    amp: bool = True  # bf16 autocast on CPU, fp16/bf16 mixed precision on CUDA
    channels_last: bool = True
    seed: int = 0
    threads: int = 0  # 0: torch's default
    device: str = "auto"
    eval_tta: str = "flip"  # TTA used to pick the best epoch (what the runtime applies by default)
    max_train_samples: int = 0  # >0: a seeded subset (for budgeted comparisons and tests)
    max_steps: int = 0  # >0: stop each epoch after this many steps (tests)
    distill: str = ""  # teacher scores .npy (N, 7), probabilities or logits, aligned with the train split
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0
    mean: float = 0.5
    std: float = 0.5
    progress: bool = True


# ---------------------------------------------------------------------------------------------
# Setup helpers


def _distributed():
    """(rank, world_size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), world


def pick_device(name="auto"):
    """torch.device: CUDA (the local rank's GPU under torchrun) when available, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


def _autocast(device, enabled):
    if not enabled:
        return torch.autocast(device.type, enabled=False)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def load_training_data(cfg, log=print):
    """Train and public splits as uint8 arrays, after the balance strategy and subset options."""
    from fer_edge.datasets import load_fer2013

    train = load_fer2013(cfg.data, "train")
    public = load_fer2013(cfg.data, "public")
    images, labels = train.images, train.labels
    if cfg.max_train_samples and cfg.max_train_samples < len(labels):
        rng = np.random.default_rng(cfg.seed)
        keep = np.sort(rng.choice(len(labels), cfg.max_train_samples, replace=False))
        images, labels = images[keep], labels[keep]
    if cfg.balance in balance_mod.RESAMPLERS:
        from fer_edge.datasets import default_cache_dir

        images, labels = balance_mod.resample(images, labels, cfg.balance, cfg.seed, default_cache_dir(), log)
    return images, labels, public.images, public.labels


def build_optimizer(cfg, model, steps_per_epoch):
    """Optimizer and LR scheduler; the scheduler is stepped per batch except ``plateau`` (per epoch)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: choose sgd or adamw")
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.2,
                                                    div_factor=20.0, final_div_factor=200.0)
    elif cfg.schedule == "cosine":
        warm = int(cfg.warmup_epochs * steps_per_epoch)

        def factor(step):
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    elif cfg.schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.75, patience=5)
    elif cfg.schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}: choose onecycle, cosine, plateau or constant")
    return opt, sched


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict_logits(model, images, tta="none", batch_size=512, device=None, mean=0.5, std=0.5,
                   input_size=None, amp=False):
    """Logits (N, C) of a model on uint8 48x48 faces, averaged over the TTA views.

    Args:
        model: the network (put in eval mode here).
        images: uint8 numpy (N, 48, 48) or tensor (N, 1, 48, 48).
        tta: ``none``, ``flip`` or ``tencrop``.
    """
    device = device or next(model.parameters()).device
    input_size = input_size or model.default_cfg["input_size"]
    model.eval()
    x_all = torch.as_tensor(images)
    if x_all.ndim == 3:
        x_all = x_all.unsqueeze(1)
    out = []
    for start in range(0, len(x_all), batch_size):
        views = tta_views(x_all[start:start + batch_size].to(device), input_size, mean, std, tta)
        v, n = views.shape[:2]
        with _autocast(device, amp):
            logits = model(views.reshape((v * n,) + views.shape[2:]).contiguous(memory_format=torch.channels_last))
        out.append(logits.float().reshape(v, n, -1).mean(0).cpu())
    return torch.cat(out).numpy()


def evaluate_model(model, images, labels, tta="none", **kwargs):
    """fer_edge.metrics report of a model on uint8 faces."""
    return evaluate_scores(labels, predict_logits(model, images, tta, **kwargs))


# ---------------------------------------------------------------------------------------------
# Checkpoints


def model_metadata(cfg, model, metrics=None):
    """The ModelMetadata a checkpoint and its exports carry."""
    return ModelMetadata(
        input_size=model.default_cfg["input_size"], context_size=model.default_cfg["context_size"],
        mean=cfg.mean, std=cfg.std, architecture=cfg.model,
        trained_on="FER2013 Training usage (28,709 images); best epoch selected on PublicTest",
        metrics=metrics or {}, extra={"tta": cfg.eval_tta},
    )


def checkpoint_metadata(ckpt, source="checkpoint"):
    """The ModelMetadata of a checkpoint dict; the recommended TTA is the one its best epoch was chosen with."""
    meta = ModelMetadata.from_dict(ckpt["metadata"], source)
    if "tta" not in meta.extra:  # checkpoints written before the field existed
        meta = meta.replace(extra={**meta.extra, "tta": ckpt.get("config", {}).get("eval_tta", "none")})
    return meta


def save_checkpoint(path, state):
    """Write atomically: a crash while saving leaves the previous checkpoint intact."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by ``save_checkpoint``; errors name the file."""
    from fer_edge.errors import ModelError

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelError(f"{path}: not a readable fer_edge checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "model_name" not in ckpt:
        raise ModelError(f"{path}: not a fer_edge checkpoint (no model_state/model_name)")
    return ckpt


def model_from_checkpoint(ckpt):
    """Rebuild the network of a checkpoint dict (eval mode)."""
    model = create_model(ckpt["model_name"], **ckpt.get("model_kwargs", {}))
    model.load_state_dict(ckpt["model_state"])
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The loop


def classification_loss(logits, labels, class_weights=None, label_smoothing=0.0):
    """Cross-entropy against uniformly smoothed targets; with class weights, each face's loss is scaled by
    its label's weight and the batch is normalised by the sum of those weights.

    Not ``F.cross_entropy(weight=..., label_smoothing=...)``: torch also weights the smoothing term class by
    class, which turns every face's smoothed target toward the heavily weighted classes. With FER2013's
    class weights and smoothing 0.1 that put about 18% of a happy face's target on disgust, and a
    ``--balance class-weight`` run called every face disgust after its first epoch.
    """
    if class_weights is None:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    per_face = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    weights = class_weights[labels]
    return (per_face * weights).sum() / weights.sum()


def training_step(model, opt, raw, y, cfg, input_size, aug_cfg=None, aug_gen=None, loss_weights=None,
                  teacher_logits=None):
    """One optimisation step on a batch of uint8 faces; returns (loss, float32 logits).

    Augments on the batch's device (or takes the centre crop when ``aug_cfg`` is None), runs the forward
    pass under ``cfg.amp`` autocast, adds the distillation term when teacher logits are given, and steps
    the optimizer. The learning-rate scheduler stays with the caller: it is stepped per batch or per epoch.
    benchmarks/training_throughput.py times this same function.
    """
    if aug_cfg is not None:
        x = augment_batch(raw, input_size, cfg.mean, cfg.std, aug_cfg, aug_gen)
    else:
        x = tta_views(raw, input_size, cfg.mean, cfg.std, "none")[0]
    x = x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x
    with _autocast(raw.device, cfg.amp):
        logits = model(x)
    logits = logits.float()
    loss = classification_loss(logits, y, loss_weights, cfg.label_smoothing)
    if teacher_logits is not None:
        t = cfg.distill_temperature
        soft = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher_logits / t, 1),
                        reduction="batchmean") * t * t
        loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * soft
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, logits


class _Logger:
    def __init__(self, path, enabled):
        self.path, self.enabled = path, enabled

    def __call__(self, msg):
        if not self.enabled:
            return
        print(msg, flush=True)
        with open(self.path, "a") as fh:
            fh.write(msg + "\n")


def train(cfg, resume=False, stop_after=None, epochs=None, after_epoch=None):
    """Run (or resume) a training run.

    Args:
        cfg: TrainConfig (on resume only ``cfg.out`` is read: the stored config wins).
        resume: continue from ``cfg.out/last.pt``.
        stop_after: leave after this many epochs in this call (the run stays resumable), e.g. to train
            in time slices.
        epochs: on resume, a new total epoch count; allowed for the plateau and constant schedules,
            whose learning rate does not depend on the run's length.
        after_epoch: called as ``after_epoch(row)`` on rank 0 once an epoch's checkpoints are written
            (``scripts/device_train.py`` times whole epochs with it).

    Returns:
        The per-epoch history (list of dicts).
    """
    rank, world = _distributed()
    os.makedirs(cfg.out, exist_ok=True)
    log = _Logger(os.path.join(cfg.out, "train.log"), rank == 0)
    last_path = os.path.join(cfg.out, "last.pt")
    ckpt = None
    if resume:
        if not os.path.isfile(last_path):
            raise FileNotFoundError(f"{last_path}: nothing to resume (no checkpoint in {cfg.out})")
        ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
        cfg = TrainConfig(**ckpt["config"])
        if epochs and epochs != cfg.epochs:
            if cfg.schedule in ("onecycle", "cosine"):
                raise ValueError(f"{cfg.out}: a {cfg.schedule} schedule is fixed to {cfg.epochs} epochs; "
                                 "resume without changing --epochs")
            cfg.epochs = epochs
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)

    images, labels, val_images, val_labels = load_training_data(cfg, log)
    num_classes = len(CLASS_NAMES)
    model = create_model(cfg.model).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    input_size = model.default_cfg["input_size"]
    per_rank_batch = max(1, cfg.batch_size // world)
    n_local = len(labels) // world
    steps_per_epoch = max(1, n_local // per_rank_batch)
    if cfg.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
    opt, sched = build_optimizer(cfg, model, steps_per_epoch)
    loss_weights = None
    if cfg.balance == "class-weight":
        loss_weights = torch.tensor(balance_mod.class_weights(labels, num_classes), device=device)
    teacher = None
    if cfg.distill:
        teacher = torch.from_numpy(load_teacher_logits(cfg.distill, len(labels), num_classes)).to(device)

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    history, best, start_epoch = [], {"top1": -1.0, "epoch": -1}, 0
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1000 * rank + 1)
    if ckpt is not None:
        model.load_state_dict(ckpt["model_state"])
        opt.load_state_dict(ckpt["optimizer_state"])
        sched.load_state_dict(ckpt["scheduler_state"])
        history, best, start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
        gen.set_state(ckpt["rng"]["shuffle"])
        aug_gen.set_state(ckpt["rng"]["augment"][rank] if rank < len(ckpt["rng"]["augment"]) else aug_gen.get_state())
        log(f"resumed {cfg.out} at epoch {start_epoch} (best top-1 {best['top1']:.4f} at epoch {best['epoch']})")
    else:
        log(f"model {cfg.model}: {count_parameters(model) / 1e6:.2f} M parameters, "
            f"{count_macs(model) / 1e6:.1f} M MACs per face; {len(labels)} training images; "
            f"device {device}, {torch.get_num_threads()} threads, world {world}")
        with open(os.path.join(cfg.out, "config.json"), "w") as fh:
            json.dump(dataclasses.asdict(cfg), fh, indent=2)

    images_t = torch.from_numpy(images).unsqueeze(1).to(device)
    labels_t = torch.from_numpy(labels).to(device)
    sampler_w = torch.from_numpy(balance_mod.sample_weights(labels, num_classes)) if cfg.balance == "sampler" else None
    aug_cfg = AugmentConfig() if cfg.augment else None

    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        if sampler_w is not None:
            order = torch.multinomial(sampler_w, len(labels), replacement=True, generator=gen)
        else:
            order = torch.randperm(len(labels), generator=gen)
        local = order[rank * n_local:(rank + 1) * n_local].to(device)
        train_model.train()
        total_loss, correct, seen = 0.0, 0, 0
        bar = range(steps_per_epoch)
        if rank == 0 and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(bar, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        for step in bar:
            idx = local[step * per_rank_batch:(step + 1) * per_rank_batch]
            y = labels_t[idx]
            loss, logits = training_step(train_model, opt, images_t[idx], y, cfg, input_size, aug_cfg, aug_gen,
                                         loss_weights, None if teacher is None else teacher[idx])
            if cfg.schedule != "plateau":
                sched.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if hasattr(bar, "set_postfix") and step % 10 == 0:
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        train_time = time.time() - t0
        row = {"epoch": epoch, "train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen),
               "lr": opt.param_groups[0]["lr"], "train_seconds": train_time,
               "images_per_second": seen * world / max(train_time, 1e-9)}
        if rank == 0:
            report = evaluate_model(model, val_images, val_labels, tta=cfg.eval_tta, device=device,
                                    mean=cfg.mean, std=cfg.std)
            row.update({"public_top1": report["top1"], "public_top2": report["top2"],
                        "public_weighted_acc": report["weighted_accuracy"]})
            if cfg.schedule == "plateau":
                sched.step(report["top1"])
            if report["top1"] > best["top1"]:
                best = {"top1": report["top1"], "epoch": epoch, "report": report}
        if world > 1:
            import torch.distributed as dist

            box = [best]
            dist.broadcast_object_list(box, src=0)
            best = box[0]
            if cfg.schedule == "plateau":
                sched_state = [sched.state_dict()]
                dist.broadcast_object_list(sched_state, src=0)
                sched.load_state_dict(sched_state[0])
        history.append(row)
        aug_states = [aug_gen.get_state()]
        if world > 1:
            import torch.distributed as dist

            aug_states = [None] * world
            dist.all_gather_object(aug_states, aug_gen.get_state())
        if rank == 0:
            log(f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} train-acc {row['train_acc']:.4f} "
                f"public top-1 ({cfg.eval_tta}) {row['public_top1']:.4f} weighted {row['public_weighted_acc']:.4f} "
                f"lr {row['lr']:.5f} {row['images_per_second']:.0f} img/s")
            state = {
                "model_name": cfg.model, "model_kwargs": {}, "model_state": model.state_dict(),
                "optimizer_state": opt.state_dict(), "scheduler_state": sched.state_dict(),
                "epoch": epoch, "history": history, "best": best, "config": dataclasses.asdict(cfg),
                "rng": {"shuffle": gen.get_state(), "augment": aug_states},
                "metadata": model_metadata(cfg, model).to_dict(),
            }
            save_checkpoint(last_path, state)
            if best["epoch"] == epoch:
                best_state = {k: state[k] for k in ("model_name", "model_kwargs", "model_state", "epoch",
                                                    "config", "metadata")}
                best_state["metadata"] = model_metadata(cfg, model, _card_metrics(report, cfg.eval_tta)).to_dict()
                save_checkpoint(os.path.join(cfg.out, "best.pt"), best_state)
            write_history(cfg.out, history)
            if after_epoch is not None:
                after_epoch(row)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return history


def _card_metrics(report, tta):
    return {"split": "public", "tta": tta, "top1": report["top1"], "top2": report["top2"],
            "top3": report["top3"], "weighted_accuracy": report["weighted_accuracy"]}


def write_history(out_dir, history):
    """metrics.csv, metrics.json and (with matplotlib) curves.png."""
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(history, fh, indent=1)
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [r["epoch"] + 1 for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    ax2.plot(epochs, [r["train_acc"] for r in history], label="train accuracy")
    ax2.plot(epochs, [r.get("public_top1", float("nan")) for r in history], label="PublicTest top-1")
    ax2.plot(epochs, [r.get("public_weighted_acc", float("nan")) for r in history], label="PublicTest weighted")
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=100)
    plt.close(fig)
