"""Training throughput (images/s) of each registered model on this machine.

One training step = batched augmentation + forward + backward + SGD step on a batch of 48x48 faces: the
operations of fer-train's step (training/engine.py), restated here without its schedule, label
smoothing and bookkeeping, which cost little next to the network. bf16 autocast and float32 are measured in turns, so their ratio is fair.

    python benchmarks/training_throughput.py --models vgg_edge vgg_half vgg_paper --json out.json
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from fer_edge.cli.bench import machine_info
from training.augment import augment_batch
from training.models import count_macs, create_model


def measure(name, amp, batch, steps, warmup=2):
    """Median images/s over ``steps`` timed training steps."""
    torch.manual_seed(0)
    model = create_model(name).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    faces = torch.randint(0, 256, (batch, 1, 48, 48), dtype=torch.uint8)
    labels = torch.randint(0, 7, (batch,))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        x = augment_batch(faces, model.default_cfg["input_size"], 0.5, 0.5).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    return batch / times[len(times) // 2]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg_edge", "vgg_half", "vgg_paper"], help="(default: %(default)s)")
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
