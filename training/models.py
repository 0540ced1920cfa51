"""VGG-style FER networks, registered by name and built with ``create_model(name)``.

``vgg_paper`` is the network of Khaireddin & Chen, "Facial Emotion Recognition: State of the Art
Performance on FER2013" (2021): four stages of two conv3x3-BatchNorm-ReLU blocks (64/128/256/512) each
closed by 2x2 max-pooling, on 40x40 crops, then fully connected 2048-4096-4096-7 with dropout 0.2.
``vgg_edge`` keeps that shape at a width and head sized for CPUs and Jetsons.
"""

import torch
from torch import nn

_REGISTRY = {}


def register_model(fn):
    """Decorator: make ``fn(**kwargs) -> nn.Module`` buildable by its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models():
    """Names of the registered models, sorted."""
    return sorted(_REGISTRY)


def create_model(name, **kwargs):
    """Build a registered model.

    Args:
        name: a name from ``list_models()``.
        **kwargs: passed to the model's builder (e.g. ``num_classes``, ``dropout``).

    Returns:
        An ``nn.Module`` whose ``default_cfg`` dict names its input size.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    model = _REGISTRY[name](**kwargs)
    model.model_name = name
    return model


class FerVgg(nn.Module):
    """Stages of ``convs_per_stage`` x [conv3x3, BN, ReLU] + 2x2 max-pool, then an MLP head.

    Args:
        widths: output channels of each stage.
        hidden: widths of the hidden fully connected layers (empty for a linear head).
        input_size: side of the square gray input.
        num_classes: number of outputs (logits).
        dropout: dropout after each hidden fully connected layer.
        convs_per_stage: conv blocks per stage.
    """

    def __init__(self, widths, hidden, input_size=40, num_classes=7, dropout=0.2, convs_per_stage=2,
                 in_channels=1):
        super().__init__()
        layers, channels, side = [], in_channels, input_size
        for width in widths:
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                           nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2))
            side //= 2
        self.features = nn.Sequential(*layers)
        head, features = [nn.Flatten()], channels * side * side
        for width in hidden:
            head += [nn.Linear(features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            features = width
        head.append(nn.Linear(features, num_classes))
        self.classifier = nn.Sequential(*head)
        self.default_cfg = {"input_size": input_size, "context_size": 48, "num_classes": num_classes}
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


class _ResidualBlock(nn.Module):
    """Two conv3x3-BN layers around an identity (or 1x1 strided projection) shortcut, ResNet's basic block."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class FerResNet(nn.Module):
    """A conv3x3 stem, one residual block per stage (stride 2 from the second), global average pooling
    and a linear head.

    It sees the same 40x40 crops as the VGGs but through skip connections and a pooled head instead of
    a flattened one, so its mistakes differ more from theirs: that is what an ensemble member needs.

    Args:
        widths: output channels of each stage.
        input_size: side of the square gray input.
        num_classes: number of outputs (logits).
        dropout: dropout before the linear head.
    """

    def __init__(self, widths, input_size=40, num_classes=7, dropout=0.2, in_channels=1):
        super().__init__()
        layers = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        channels = widths[0]
        for i, width in enumerate(widths):
            layers.append(_ResidualBlock(channels, width, stride=1 if i == 0 else 2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(channels, num_classes))
        self.default_cfg = {"input_size": input_size, "context_size": 48, "num_classes": num_classes}
        # Residual branches keep BN's unit scale. Zero-initialising them (as deep ResNets do) left this
        # shallow net at chance for 3 epochs of FER2013 under the one-cycle warm-up: at the start its only
        # path was the 1x1 strided shortcuts, which together see one pixel in 64.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model
def vgg_paper(num_classes=7, dropout=0.2, input_size=40):
    """The paper's VGG: 64/128/256/512, FC 2048-4096-4096-7, dropout 0.2 (29.9 M parameters, 351 M MACs per face)."""
    return FerVgg((64, 128, 256, 512), (4096, 4096), input_size, num_classes, dropout)


@register_model
def vgg_edge(num_classes=7, dropout=0.3, input_size=40):
    """Edge VGG: 24/64/128/256 with one 512-wide hidden layer: 1.7 M parameters, 73 M MACs per face.

    The first stage, at full 40x40 resolution, is the costliest per channel, so it is the one narrowed;
    the later stages keep the half-width VGG's channels that carry most of the accuracy.
    """
    return FerVgg((24, 64, 128, 256), (512,), input_size, num_classes, dropout)


@register_model
def vgg_half(num_classes=7, dropout=0.2, input_size=40):
    """Half-width paper VGG (32/64/128/256, FC 1024-1024-1024-7): the issue's CPU probe, 3.3 M parameters."""
    return FerVgg((32, 64, 128, 256), (1024, 1024), input_size, num_classes, dropout)


@register_model
def resnet_edge(num_classes=7, dropout=0.2, input_size=40):
    """Residual 24/64/128/256 with a pooled linear head (1.21 M parameters, 83.7 M MACs per face).

    An ensemble member unlike the VGGs; at 167 MFLOPs it is over vgg_edge's 150 MFLOPs budget.
    """
    return FerResNet((24, 64, 128, 256), input_size, num_classes, dropout)


@register_model
def vgg_tiny(num_classes=7, dropout=0.0, input_size=40):
    """A tiny variant for tests and smoke runs (8/16 channels, two stages)."""
    return FerVgg((8, 16), (), input_size, num_classes, dropout)


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model, input_size=None):
    """Multiply-accumulates of one forward pass on one face (conv and linear layers).

    Returns:
        MACs as an int; FLOPs are commonly quoted as 2 x MACs.
    """
    input_size = input_size or model.default_cfg["input_size"]
    total = 0

    def conv_hook(module, _inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += output.numel() // output.shape[0] * k

    def linear_hook(module, _inputs, _output):
        nonlocal total
        total += module.in_features * module.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    with torch.no_grad():
        model(torch.zeros(1, in_channels, input_size, input_size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total
