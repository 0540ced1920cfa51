"""Training throughput (images/s) of each registered model on this machine.

One training step is fer-train's own ``training.engine.training_step`` (batched augmentation, forward under
autocast, label-smoothed loss, backward, SGD step) on a batch of random 48x48 faces with the default
TrainConfig; the schedule and per-epoch bookkeeping are left out, as they cost little next to the network.
bf16 autocast and float32 are measured in turns, so their ratio is fair.

    python benchmarks/training_throughput.py --models vgg_edge vgg_half resnet_edge vgg_paper --json out.json
"""

import argparse
import json
import sys
import time

import torch

from fer_edge.cli.bench import machine_info
from training.augment import AugmentConfig
from training.engine import TrainConfig, build_optimizer, training_step
from training.models import count_macs, create_model


def measure(name, amp, batch, steps, warmup=2):
    """Median images/s over ``steps`` timed training steps."""
    torch.manual_seed(0)
    cfg = TrainConfig(model=name, amp=amp, batch_size=batch)
    model = create_model(name).to(memory_format=torch.channels_last).train()
    opt, _ = build_optimizer(cfg, model, steps_per_epoch=warmup + steps)
    faces = torch.randint(0, 256, (batch, 1, 48, 48), dtype=torch.uint8)
    labels = torch.randint(0, 7, (batch,))
    aug_gen = torch.Generator().manual_seed(1)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        training_step(model, opt, faces, labels, cfg, model.default_cfg["input_size"], AugmentConfig(), aug_gen)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    return batch / times[len(times) // 2]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg_edge", "vgg_half", "resnet_edge", "vgg_paper"],
                   help="(default: %(default)s)")
    p.add_argument("--batch", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per setting (default: %(default)s)")
    p.add_argument("--json", help="write results as JSON (default: none)")
    args = p.parse_args(argv)
    rows = []
    print(f"{machine_info()['processor']}, {torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch}")
    print(f"{'model':<10} {'MACs':>8} {'bf16 img/s':>11} {'fp32 img/s':>11} {'bf16/fp32':>10} {'epoch (bf16)':>13}")
    for name in args.models:
        bf16 = measure(name, True, args.batch, args.steps)
        fp32 = measure(name, False, args.batch, args.steps)
        macs = count_macs(create_model(name))
        rows.append({"model": name, "macs": macs, "bf16_images_per_s": bf16, "fp32_images_per_s": fp32})
        print(f"{name:<10} {macs / 1e6:>7.1f}M {bf16:>11.0f} {fp32:>11.0f} {bf16 / fp32:>9.2f}x "
              f"{28709 / bf16 / 60:>10.1f} min", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine_info(), "batch": args.batch, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
