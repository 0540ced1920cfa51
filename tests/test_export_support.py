"""Helpers shared by the export tests: tiny models, checkpoints, synthetic FER2013 trees, a fake tensorrt.

This module holds no tests; the test_export_*.py files import it.
"""

import os
import types

import numpy as np

from fer_edge.constants import CLASS_NAMES


def tiny_model(seed=0, name="vgg_tiny"):
    """A registered model (vgg_tiny by default) with random weights and non-trivial BatchNorm statistics
    (so folding BN is exercised)."""
    import torch

    from training.models import create_model

    torch.manual_seed(seed)
    model = create_model(name)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def tiny_metadata(**changes):
    """ModelMetadata of vgg_tiny."""
    from fer_edge.metadata import ModelMetadata

    base = dict(input_size=40, context_size=48, mean=0.5, std=0.5, architecture="vgg_tiny",
                trained_on="random weights (test)", metrics={"top1": 0.5})
    base.update(changes)
    return ModelMetadata(**base)


def write_checkpoint(path, seed=0):
    """A checkpoint as fer-train writes it (the fields load_checkpoint needs) of a tiny model."""
    import torch

    model = tiny_model(seed)
    torch.save({"model_name": "vgg_tiny", "model_kwargs": {}, "model_state": model.state_dict(), "epoch": 0,
                "config": {}, "metadata": tiny_metadata().to_dict()}, path)
    return str(path)


def write_fer_tree(root, train_per_class=12, public_per_class=6, seed=0):
    """A synthetic FER2013 image-folder tree: train/<class>/Training_*.png, test/<class>/PublicTest_*.png.

    Each class has its own mean brightness, so the images are not all alike.
    """
    import cv2

    rng = np.random.default_rng(seed)
    for split, prefix, count in (("train", "Training", train_per_class), ("test", "PublicTest", public_per_class)):
        for c, name in enumerate(CLASS_NAMES):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                img = np.clip(rng.normal(40 + 25 * c, 40, (48, 48)), 0, 255).astype(np.uint8)
                cv2.imwrite(os.path.join(folder, f"{prefix}_{c}{i:04d}.png"), img)
    return str(root)


# ---------------------------------------------------------------------------------------------
# A stand-in tensorrt module that records what the builder chain does


class _Enum:
    def __init__(self, **members):
        for k, v in members.items():
            setattr(self, k, v)


class FakeTensor:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class FakeNetwork:
    def __init__(self, flags):
        self.flags = flags
        self.parsed = None

    def get_input(self, i):
        return FakeTensor("input", (-1, 1, 40, 40))


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class FakeTimingCache:
    def __init__(self, data):
        self.data = data

    def serialize(self):
        return memoryview(b"TIMING" + bytes(self.data))


class FakeConfig:
    def __init__(self):
        self.flags, self.pools, self.profiles = [], {}, []
        self.int8_calibrator = None
        self.calibration_profile = None
        self.default_device_type = "GPU"
        self.DLA_core = -1
        self.timing_cache = None

    def set_flag(self, flag):
        self.flags.append(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def set_calibration_profile(self, profile):
        self.calibration_profile = profile

    def create_timing_cache(self, data):
        return FakeTimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache

    def get_timing_cache(self):
        return self.timing_cache


class FakeBuilder:
    def __init__(self, trt, logger):
        self.trt = trt
        self.num_DLA_cores = 2
        trt.builders.append(self)
        self.networks, self.configs, self.builds = [], [], []

    def create_network(self, flags):
        net = FakeNetwork(flags)
        self.networks.append(net)
        return net

    def create_builder_config(self):
        cfg = FakeConfig()
        self.configs.append(cfg)
        return cfg

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        self.builds.append((network, config))
        calib = config.int8_calibrator
        if calib is not None:
            # What TensorRT does with a calibrator: use its cache, or calibrate and hand it a cache.
            if not calib.read_calibration_cache():
                while calib.get_batch(["input"]) is not None:
                    pass
                calib.write_calibration_cache(memoryview(b"TRT-FAKE-EntropyCalibration2\ninput: 3c000000\n"))
        return memoryview(b"ENGINE:" + network.parsed.encode())


class FakeParser:
    def __init__(self, network, logger):
        self.network = network
        self.num_errors = 0

    def parse(self, data):
        import onnx

        from fer_edge.metadata import from_onnx_proto

        meta = from_onnx_proto(onnx.load_from_string(bytes(data)))
        self.network.parsed = meta.precision
        return True

    def get_error(self, i):
        return "no error"


def fake_tensorrt(version):
    """A module object standing in for tensorrt ``version`` (10.x keeps the weak-typing API, 11.x not)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    trt.builders = []
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    trt.Builder = lambda logger: FakeBuilder(trt, logger)
    trt.OnnxParser = FakeParser
    trt.NetworkDefinitionCreationFlag = _Enum(STRONGLY_TYPED=1)
    trt.MemoryPoolType = _Enum(WORKSPACE="WORKSPACE")
    trt.DeviceType = _Enum(GPU="GPU", DLA="DLA")
    if major >= 11:
        # TensorRT 11 removed the precision flags and implicit calibration.
        trt.BuilderFlag = _Enum(GPU_FALLBACK="GPU_FALLBACK", REFIT="REFIT")
    else:
        trt.BuilderFlag = _Enum(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK", REFIT="REFIT")
        trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {"__init__": lambda self: None})
    return trt


class FakeDevice:
    """Stands in for CUDA memory: remembers the uploaded batches."""

    def __init__(self):
        self.uploads = []
        self.freed = False

    def upload(self, array):
        self.uploads.append(array.copy())
        return 0x1000 + len(self.uploads)

    def free(self):
        self.freed = True
