"""Split a checkpoint's weights into float16 parts that fit a size-limited transfer, and join them back.

The paper's VGG is 120 MB in float32; a lent GPU machine returns files of at most 16 MiB. In float16
its weights are 60 MB, four 15 MiB parts. A JSON manifest lists the parts with their SHA-256, so
a missing, truncated or foreign part is named instead of loading as wrong weights. Joining gives a
float32 checkpoint that ``fer-eval`` and ``fer-export`` read like any other.

    python -m training.checkpoint_parts split runs/x/best.pt OUT_DIR
    python -m training.checkpoint_parts join OUT_DIR/best.parts.json runs/x_gpu/best.pt
"""

import argparse
import hashlib
import io
import json
import os
import sys

import torch

from fer_edge.errors import ModelError
from fer_edge.io_utils import atomic_write_bytes, atomic_write_text

from .engine import load_checkpoint, save_checkpoint

FORMAT = "fer_edge checkpoint parts 1"
DEFAULT_PART_BYTES = 15 * 2**20
_KEPT = ("model_name", "model_kwargs", "model_state", "epoch", "config", "metadata")
_FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def write_parts(checkpoint_path, out_dir, part_bytes=DEFAULT_PART_BYTES, stem="best"):
    """Write the checkpoint's model (weights in float16) as ``<stem>.partNN`` files and a manifest.

    Args:
        checkpoint_path: a checkpoint written by training (``best.pt``).
        out_dir: folder for the parts and ``<stem>.parts.json``.
        part_bytes: the largest part, in bytes.
        stem: file-name stem of the parts and the manifest.

    Returns:
        The manifest's path.

    Raises:
        ModelError: a weight too large for float16 (named), or an unreadable checkpoint.
    """
    ckpt = load_checkpoint(checkpoint_path)
    state = {}
    for name, tensor in ckpt["model_state"].items():
        if tensor.is_floating_point():
            peak = tensor.abs().max().item() if tensor.numel() else 0.0
            if peak > _FLOAT16_MAX:
                raise ModelError(f"{checkpoint_path}: {name} holds {peak:g}, beyond float16's range")
            tensor = tensor.to(torch.float16)
        state[name] = tensor.cpu()
    kept = {k: ckpt[k] for k in _KEPT if k in ckpt}
    kept["model_state"] = state
    buffer = io.BytesIO()
    torch.save(kept, buffer)
    payload = buffer.getvalue()
    os.makedirs(out_dir, exist_ok=True)
    parts = []
    for index, start in enumerate(range(0, len(payload), part_bytes)):
        name = f"{stem}.part{index:02d}"
        atomic_write_bytes(os.path.join(out_dir, name), payload[start:start + part_bytes])
        parts.append(name)
    manifest = {"format": FORMAT, "source": os.path.basename(checkpoint_path), "weights": "float16",
                "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "parts": parts}
    manifest_path = os.path.join(out_dir, f"{stem}.parts.json")
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return manifest_path


def join_parts(manifest_path, dest):
    """Join the parts a manifest lists into a float32 checkpoint at ``dest``.

    Returns:
        The joined checkpoint dict.

    Raises:
        ModelError: naming the manifest or the part that is missing, or whose bytes do not match.
    """
    try:
        with open(manifest_path) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{manifest_path}: not a readable parts manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"{manifest_path}: not a fer_edge parts manifest (format {FORMAT!r} expected)")
    missing = [k for k in ("parts", "bytes", "sha256") if k not in manifest]
    if missing:
        raise ModelError(f"{manifest_path}: the manifest lacks {', '.join(missing)}")
    if any(os.path.basename(str(name)) != name for name in manifest["parts"]):
        raise ModelError(f"{manifest_path}: parts must be file names beside the manifest, not paths")
    folder = os.path.dirname(os.path.abspath(manifest_path))
    chunks = []
    for name in manifest["parts"]:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ModelError(f"{path}: part missing (listed in {manifest_path})")
        with open(path, "rb") as fh:
            chunks.append(fh.read())
    payload = b"".join(chunks)
    if len(payload) != manifest["bytes"] or hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
        raise ModelError(f"{manifest_path}: the parts hold {len(payload)} bytes whose SHA-256 does not match the "
                         f"manifest's ({manifest['bytes']} bytes): a part is truncated, damaged or from another run")
    ckpt = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    ckpt["model_state"] = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model_state"].items()}
    ckpt.setdefault("metadata", {}).setdefault("extra", {})["weights_carried_as"] = "float16"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    save_checkpoint(os.fspath(dest), ckpt)
    return ckpt


def main(argv=None):
    """``split CHECKPOINT OUT_DIR`` or ``join MANIFEST DEST``; returns the exit code."""
    from fer_edge.cli_common import run_main

    p = argparse.ArgumentParser(prog="python -m training.checkpoint_parts", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="a checkpoint into float16 parts and a manifest")
    split.add_argument("checkpoint")
    split.add_argument("out_dir")
    split.add_argument("--part-mib", type=float, default=DEFAULT_PART_BYTES / 2**20,
                       help="largest part in MiB (default: %(default)s)")
    join = sub.add_parser("join", help="the parts a manifest lists into a float32 checkpoint")
    join.add_argument("manifest")
    join.add_argument("dest")
    args = p.parse_args(argv)

    def run():
        if args.command == "split":
            print(write_parts(args.checkpoint, args.out_dir, int(args.part_mib * 2**20)))
        else:
            ckpt = join_parts(args.manifest, args.dest)
            print(f"wrote {args.dest}: {ckpt['model_name']}, epoch {ckpt.get('epoch', -1) + 1}")
        return 0

    return run_main("checkpoint_parts", run)


if __name__ == "__main__":
    sys.exit(main())
