"""Ensembles: members' probabilities averaged (optionally weighted), as one torch module.

The export package turns an ``Ensemble`` into one ONNX graph whose output is probabilities.
"""

import numpy as np
import torch
from torch import nn


class Ensemble(nn.Module):
    """Weighted mean of the members' softmax outputs.

    Args:
        members: networks taking the same (N, C, S, S) input and returning logits.
        weights: non-negative weights (normalised to sum 1); None for a plain mean.
    """

    def __init__(self, members, weights=None):
        super().__init__()
        self.members = nn.ModuleList(members)
        sizes = {m.default_cfg["input_size"] for m in members}
        if len(sizes) != 1:
            raise ValueError(f"ensemble members need one input size, got {sorted(sizes)}")
        w = torch.ones(len(members)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (len(members),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"need {len(members)} non-negative weights with a positive sum, got {weights}")
        self.register_buffer("weights", w / w.sum())
        self.default_cfg = dict(members[0].default_cfg)

    def forward(self, x):
        probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members])
        return torch.einsum("m,mnc->nc", self.weights, probs)


def fit_weights(member_logits, labels, steps=300):
    """Ensemble weights that minimise the negative log-likelihood of ``labels`` (fit on PublicTest).

    Args:
        member_logits: list of (N, C) arrays, one per member.
        labels: (N,) int labels.

    Returns:
        numpy weights on the simplex, one per member.
    """
    probs = torch.stack([torch.softmax(torch.as_tensor(np.asarray(l), dtype=torch.float64), 1)
                         for l in member_logits])
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    raw = torch.zeros(len(member_logits), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([raw], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        mix = torch.einsum("m,mnc->nc", torch.softmax(raw, 0), probs)
        loss = -torch.log(mix[torch.arange(len(y)), y].clamp_min(1e-12)).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(raw.detach(), 0).numpy()


def combine(member_probs, weights=None):
    """Weighted mean of members' probability arrays (M of (N, C)) -> (N, C)."""
    p = np.stack([np.asarray(m, dtype=np.float64) for m in member_probs])
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.einsum("m,mnc->nc", w / w.sum(), p)
