"""A Triton Inference Server model repository for the exported models.

Layout (one model per exported file)::

    DIR/<name>/config.pbtxt      platform, max_batch_size, input/output, dynamic batching, instances
    DIR/<name>/labels.txt        the class names, for Triton's classification extension
    DIR/<name>/1/model.onnx      (or model.plan for a TensorRT engine)

The fer_edge metadata rides along as the model parameter ``fer_edge_metadata`` (a JSON string), so a
client can ask Triton for the preprocessing. A TensorRT engine only loads on the GPU model and TensorRT
version it was built with: build it where (or for where) Triton runs.

``parse_pbtxt`` is a small reader of the protobuf text format subset written here, used to check the
written configuration without depending on Triton's protos.
"""

import json
import os

from fer_edge.errors import FerEdgeError

DEFAULT_PREFERRED = (16, 64)
DEFAULT_QUEUE_DELAY_US = 500


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def config_pbtxt(name, platform, max_batch_size, input_name, input_dims, output_name, output_dims,
                 kind="KIND_GPU", count=1, preferred=DEFAULT_PREFERRED, queue_delay_us=DEFAULT_QUEUE_DELAY_US,
                 labels="labels.txt", parameters=None):
    """The text of a Triton ``config.pbtxt``.

    Args:
        name: model name (the folder name).
        platform: ``onnxruntime_onnx`` or ``tensorrt_plan``.
        max_batch_size: largest batch Triton forms; the batch axis is left out of ``dims``.
        input_name, input_dims: the input tensor and its shape without the batch axis.
        output_name, output_dims: the output tensor and its shape without the batch axis.
        kind: ``KIND_GPU`` or ``KIND_CPU``.
        count: model instances per device.
        preferred: preferred dynamic-batch sizes (those above ``max_batch_size`` are dropped).
        queue_delay_us: how long the dynamic batcher waits to fill a batch.
        labels: label file name for the output, or None.
        parameters: dict of string parameters.

    Returns:
        str.
    """
    sizes = [int(p) for p in preferred if int(p) <= max_batch_size]
    lines = [f"name: {_quote(name)}", f"platform: {_quote(platform)}", f"max_batch_size: {int(max_batch_size)}",
             "input [", "  {", f"    name: {_quote(input_name)}", "    data_type: TYPE_FP32",
             f"    dims: [ {', '.join(str(int(d)) for d in input_dims)} ]", "  }", "]",
             "output [", "  {", f"    name: {_quote(output_name)}", "    data_type: TYPE_FP32",
             f"    dims: [ {', '.join(str(int(d)) for d in output_dims)} ]"]
    if labels:
        lines.append(f"    label_filename: {_quote(labels)}")
    lines += ["  }", "]", "dynamic_batching {"]
    if sizes:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(s) for s in sizes)} ]")
    lines += [f"  max_queue_delay_microseconds: {int(queue_delay_us)}", "}",
              "instance_group [", "  {", f"    count: {int(count)}", f"    kind: {kind}", "  }", "]",
              "version_policy: { latest: { num_versions: 1 } }"]
    for key, value in (parameters or {}).items():
        lines += ["parameters {", f"  key: {_quote(key)}", f"  value: {{ string_value: {_quote(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def write_model(repo, name, model_path, platform, metadata, max_batch_size, kind="KIND_GPU", count=1,
                version=1, preferred=DEFAULT_PREFERRED):
    """Add one model to a Triton repository (files written atomically; the model file is copied).

    Args:
        repo: the repository folder.
        name: model name.
        model_path: the ONNX file or TensorRT engine to serve.
        platform: ``onnxruntime_onnx`` or ``tensorrt_plan``.
        metadata: the model's ModelMetadata.
        max_batch_size: Triton's max_batch_size (at most the engine profile's max).
        kind: ``KIND_GPU`` or ``KIND_CPU``.
        count: instances per device.
        version: version folder number.
        preferred: preferred dynamic-batch sizes.

    Returns:
        Path of the written config.pbtxt.
    """
    from fer_edge.io_utils import atomic_output, atomic_write_text

    folder = os.path.join(repo, name)
    file_name = "model.plan" if platform == "tensorrt_plan" else "model.onnx"
    with atomic_output(os.path.join(folder, str(int(version)), file_name)) as tmp:
        with open(model_path, "rb") as src, open(tmp, "wb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
    atomic_write_text(os.path.join(folder, "labels.txt"), "\n".join(metadata.class_names) + "\n")
    out_name = "probabilities" if metadata.output == "probabilities" else "logits"
    size = metadata.input_size
    text = config_pbtxt(name, platform, max_batch_size, "input", (metadata.channels, size, size), out_name,
                        (len(metadata.class_names),), kind=kind, count=count, preferred=preferred,
                        parameters={"fer_edge_metadata": metadata.to_json()})
    config_path = os.path.join(folder, "config.pbtxt")
    atomic_write_text(config_path, text)
    return config_path


# ---------------------------------------------------------------------------------------------
# Reading the text format back


class PbtxtError(FerEdgeError, ValueError):
    """A config.pbtxt that the small reader cannot parse."""


def _tokens(text):
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace() or c == ",":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{}[]:":
            yield c
            i += 1
        elif c in "\"'":
            quote, i, out = c, i + 1, []
            while i < n and text[i] != quote:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                    out.append({"n": "\n", "t": "\t"}.get(text[i], text[i]))
                else:
                    out.append(text[i])
                i += 1
            if i >= n:
                raise PbtxtError("unterminated string")
            i += 1
            yield ("str", "".join(out))
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{}[]:,#\"'":
                j += 1
            yield ("word", text[i:j])
            i = j


def _scalar(token):
    kind, value = token
    if kind == "str":
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value, value)


def parse_pbtxt(text):
    """Parse protobuf text format into nested dicts.

    Every field maps to a list of its values (repeated fields and ``[ ... ]`` lists alike), messages
    become dicts, enums stay strings, numbers become int/float.

    Args:
        text: the file's content.

    Returns:
        dict field -> list of values.
    """
    tokens = list(_tokens(text))
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        if tok == "{":
            pos += 1
            return message("}")
        if isinstance(tok, tuple):
            pos += 1
            return _scalar(tok)
        raise PbtxtError(f"unexpected {tok!r}")

    def message(end):
        nonlocal pos
        out = {}
        while pos < len(tokens) and tokens[pos] != end:
            tok = tokens[pos]
            if not isinstance(tok, tuple) or tok[0] != "word":
                raise PbtxtError(f"expected a field name, got {tok!r}")
            key = tok[1]
            pos += 1
            if pos < len(tokens) and tokens[pos] == ":":
                pos += 1
            if pos >= len(tokens):
                raise PbtxtError(f"field {key!r} has no value")
            values = out.setdefault(key, [])
            if tokens[pos] == "[":
                pos += 1
                while tokens[pos] != "]":
                    values.append(value())
                pos += 1
            else:
                values.append(value())
        if end is not None:
            if pos >= len(tokens):
                raise PbtxtError("unclosed message")
            pos += 1
        return out

    try:
        return message(None)
    except IndexError:
        raise PbtxtError("the text ends in the middle of a field") from None


def read_config(path):
    """Parse a written config.pbtxt and decode its fer_edge metadata parameter.

    Returns:
        (parsed dict, metadata dict or None).
    """
    with open(path, encoding="utf-8") as fh:
        parsed = parse_pbtxt(fh.read())
    meta = None
    for param in parsed.get("parameters", []):
        if param.get("key") == ["fer_edge_metadata"]:
            meta = json.loads(param["value"][0]["string_value"][0])
    return parsed, meta
