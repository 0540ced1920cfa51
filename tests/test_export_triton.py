"""Triton model repository: files laid out as Triton loads them, config.pbtxt parsed back."""

import json
import os

import pytest

from export import triton
from fer_edge.metadata import ModelMetadata


def test_config_text_parses_back():
    text = triton.config_pbtxt("fer", "onnxruntime_onnx", 128, "input", (1, 40, 40), "logits", (7,),
                               kind="KIND_CPU", count=2, preferred=(16, 64, 256),
                               parameters={"note": 'a "quoted" \\ value\nnext line'})
    cfg = triton.parse_pbtxt(text)
    assert cfg["name"] == ["fer"] and cfg["platform"] == ["onnxruntime_onnx"] and cfg["max_batch_size"] == [128]
    (inp,) = cfg["input"]
    assert inp["name"] == ["input"] and inp["data_type"] == ["TYPE_FP32"] and inp["dims"] == [1, 40, 40]
    (out,) = cfg["output"]
    assert out["dims"] == [7] and out["label_filename"] == ["labels.txt"]
    (batching,) = cfg["dynamic_batching"]
    assert batching["preferred_batch_size"] == [16, 64]  # 256 > max_batch_size is dropped
    assert batching["max_queue_delay_microseconds"] == [triton.DEFAULT_QUEUE_DELAY_US]
    assert cfg["instance_group"] == [{"count": [2], "kind": ["KIND_CPU"]}]
    assert cfg["version_policy"] == [{"latest": [{"num_versions": [1]}]}]
    (param,) = cfg["parameters"]
    assert param["value"][0]["string_value"] == ['a "quoted" \\ value\nnext line']


def test_parser_reads_comments_and_repeated_messages():
    cfg = triton.parse_pbtxt('# comment\nname: "x"\ninstance_group { count: 1 kind: KIND_GPU }\n'
                             'instance_group { count: 2 kind: KIND_CPU gpus: [0, 1] }\nflag: true\nrate: 0.5\n')
    assert [g["count"][0] for g in cfg["instance_group"]] == [1, 2]
    assert cfg["instance_group"][1]["gpus"] == [0, 1]
    assert cfg["flag"] == [True] and cfg["rate"] == [0.5]
    with pytest.raises(triton.PbtxtError):
        triton.parse_pbtxt('name: "x')
    with pytest.raises(triton.PbtxtError):
        triton.parse_pbtxt("input { name: 1")


def test_repository_layout_and_metadata(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really onnx")
    meta = ModelMetadata(architecture="vgg_tiny", output="probabilities")
    config = triton.write_model(str(tmp_path / "repo"), "fer_edge", str(model), "onnxruntime_onnx", meta, 64)
    folder = tmp_path / "repo" / "fer_edge"
    assert (folder / "1" / "model.onnx").read_bytes() == b"not really onnx"
    assert (folder / "labels.txt").read_text().split() == list(meta.class_names)
    cfg, stored = triton.read_config(config)
    assert cfg["output"][0]["name"] == ["probabilities"] and cfg["max_batch_size"] == [64]
    assert ModelMetadata.from_dict(stored) == meta
    plan = triton.write_model(str(tmp_path / "repo"), "fer_trt", str(model), "tensorrt_plan", meta, 256)
    assert os.path.isfile(tmp_path / "repo" / "fer_trt" / "1" / "model.plan")
    assert triton.read_config(plan)[0]["platform"] == ["tensorrt_plan"]
    assert json.loads(json.dumps(stored))  # plain JSON
