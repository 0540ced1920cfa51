"""What a model file must say about itself so that it is used correctly.

Every model fer_edge writes carries one JSON document under the ONNX ``metadata_props`` key
``fer_edge`` (and, for a TensorRT engine, in the JSON file beside it). It names the classes in order,
the input geometry, the normalisation and the crop policy, so that the runtime preprocesses faces
exactly as the training did; it also records the data the model was trained on and what it measured.
"""

import dataclasses
import json
import os

from .constants import CLASS_NAMES
from .errors import ModelError

#: ONNX metadata_props key under which the JSON document is stored.
METADATA_KEY = "fer_edge"
FORMAT_VERSION = 1


@dataclasses.dataclass
class ModelMetadata:
    """How to feed a model and read its output.

    The preprocessing contract: a face box from a detector is widened by ``margin`` (a fraction of
    its size on every side) and made square when ``square``; the face inside is converted to gray,
    resized to ``context_size`` pixels and its central ``input_size`` square is kept (FER2013 models
    see 48x48 faces and train on 40x40 crops of them); pixels become ``(x / 255 - mean) / std``.
    """

    class_names: tuple = CLASS_NAMES
    input_size: int = 40
    context_size: int = 48
    channels: int = 1
    mean: float = 0.5
    std: float = 0.5
    layout: str = "NCHW"
    margin: float = 0.0
    square: bool = True
    output: str = "logits"  # "logits" or "probabilities"
    architecture: str = "unknown"
    precision: str = "fp32"
    trained_on: str = "unknown"
    metrics: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        self.validate()

    def validate(self):
        """Raise ModelError when a field cannot describe a usable model."""
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise ModelError(f"metadata class_names must be distinct names, got {self.class_names}")
        if not 8 <= int(self.input_size) <= int(self.context_size) <= 1024:
            raise ModelError(
                f"metadata needs 8 <= input_size <= context_size <= 1024, got "
                f"input_size={self.input_size} context_size={self.context_size}"
            )
        if self.channels not in (1, 3):
            raise ModelError(f"metadata channels must be 1 or 3, got {self.channels}")
        if not float(self.std) > 0:
            raise ModelError(f"metadata std must be positive, got {self.std}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ModelError(f"metadata layout must be NCHW or NHWC, got {self.layout}")
        if not 0.0 <= float(self.margin) <= 1.0:
            raise ModelError(f"metadata margin must lie in [0, 1], got {self.margin}")
        if self.output not in ("logits", "probabilities"):
            raise ModelError(f"metadata output must be 'logits' or 'probabilities', got {self.output}")

    @property
    def crop_fraction(self):
        """Fraction of the (margin-widened, squared) face box that the network sees."""
        return self.input_size / self.context_size

    def to_dict(self):
        """Plain-JSON form."""
        out = dataclasses.asdict(self)
        out["class_names"] = list(self.class_names)
        return out

    def to_json(self):
        """The JSON document stored in model files."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data, source="metadata"):
        """Build from a dict, naming ``source`` when a field is unknown or invalid."""
        if not isinstance(data, dict):
            raise ModelError(f"{source}: fer_edge metadata must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{source}: unknown fer_edge metadata fields {unknown}")
        version = data.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ModelError(
                f"{source}: metadata format {version} is newer than this fer_edge understands "
                f"({FORMAT_VERSION}); upgrade fer_edge"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source}: invalid fer_edge metadata: {exc}") from None

    @classmethod
    def from_json(cls, text, source="metadata"):
        """Parse the JSON document stored in a model file."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{source}: fer_edge metadata is not valid JSON ({exc})") from None
        return cls.from_dict(data, source)

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def attach_to_onnx(model_proto, metadata):
    """Store ``metadata`` in an ``onnx.ModelProto`` (replacing an earlier fer_edge entry).

    Args:
        model_proto: the ONNX model, modified in place.
        metadata: a ModelMetadata.

    Returns:
        The same model_proto, for chaining.
    """
    for prop in list(model_proto.metadata_props):
        if prop.key == METADATA_KEY:
            model_proto.metadata_props.remove(prop)
    entry = model_proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = metadata.to_json()
    return model_proto


def from_onnx_proto(model_proto, source="model"):
    """Read the metadata stored in an ``onnx.ModelProto``; None when it has none."""
    for prop in model_proto.metadata_props:
        if prop.key == METADATA_KEY:
            return ModelMetadata.from_json(prop.value, source)
    return None


def from_custom_map(custom_map, source="model"):
    """Read metadata from ONNX Runtime's ``get_modelmeta().custom_metadata_map``; None if absent."""
    text = (custom_map or {}).get(METADATA_KEY)
    return None if text is None else ModelMetadata.from_json(text, source)


def engine_sidecar_path(engine_path):
    """Path of the JSON file written beside a TensorRT engine."""
    return os.fspath(engine_path) + ".json"


def resolve(found, stated=None, source="model"):
    """Choose the metadata to run a model with.

    Args:
        found: metadata read from the model file, or None when it carried none.
        stated: metadata (or a dict of fields) the caller gives explicitly; it wins over ``found``.
        source: the model's path, for the error message.

    Returns:
        A ModelMetadata.

    Raises:
        ModelError: the model has no metadata and the caller stated no preprocessing.
    """
    if stated is not None:
        if isinstance(stated, dict):
            base = found.to_dict() if found is not None else {}
            base.update(stated)
            return ModelMetadata.from_dict(base, source)
        return stated
    if found is None:
        raise ModelError(
            f"{source} carries no fer_edge metadata (class names, input size, normalisation); "
            "export it with fer-export, or pass metadata=ModelMetadata(...) to state the preprocessing"
        )
    return found
