"""The package installs light: importing fer_edge pulls no torch, and every command answers --help
even when the optional extras are missing."""

import subprocess
import sys
from importlib import metadata

import pytest

COMMANDS = ("fer-train", "fer-eval", "fer-export", "fer-bench", "fer-video")
OPTIONAL = ("torch", "onnx", "onnxscript", "onnxconverter_common", "tensorrt", "pycuda", "cuda", "matplotlib",
            "imblearn", "sklearn")


def _python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _blocking(code):
    # Setting sys.modules[name] = None makes `import name` raise ImportError, as if it were not installed.
    return f"import sys\nfor m in {OPTIONAL!r}: sys.modules[m] = None\n" + code


def _entry_point(command):
    eps = [ep for ep in metadata.entry_points(group="console_scripts") if ep.name == command]
    assert eps, f"{command} is not installed as a console script"
    return eps[0].value


def test_import_fer_edge_imports_no_heavy_packages():
    result = _python(
        "import sys, fer_edge, fer_edge.datasets, fer_edge.metrics, fer_edge.metadata, fer_edge.faces\n"
        "import importlib\n"
        "for m in ('fer_edge.runtime', 'fer_edge.preprocess', 'fer_edge.detection', 'fer_edge.video',"
        " 'fer_edge.cli.bench', 'fer_edge.cli.video'):\n"
        "    importlib.import_module(m)\n"
        "bad = [m for m in ('torch', 'tensorrt', 'pycuda', 'training', 'export') if m in sys.modules]\n"
        "print(bad)\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_compiled_extension_imports():
    from fer_edge import _preprocess_cy

    assert _preprocess_cy.__file__.endswith((".so", ".pyd"))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_without_optional_extras(command):
    module, func = _entry_point(command).split(":")
    result = _python(_blocking(f"from {module} import {func}\nsys.exit({func}(['--help']))"))
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "default" in result.stdout


def test_missing_extra_is_one_line_naming_it(tmp_path):
    module, func = _entry_point("fer-train").split(":")
    result = _python(_blocking(f"from {module} import {func}\nsys.exit({func}(['--data', {str(tmp_path)!r}]))"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "fer_edge[train]" in lines[0] and "Traceback" not in result.stderr


def test_stdout_closed_early_ends_quietly(tmp_path):
    # `fer-train ... | head` closes the pipe while the command still prints: the command finishes its work
    # (here: the file it writes after printing), then exits like SIGPIPE, without a traceback.
    done = tmp_path / "done"
    code = ("import sys\nfrom fer_edge.cli_common import run_main\n"
            "def body():\n"
            "    for i in range(200000):\n"
            "        print('line', i)\n"
            f"    open({str(done)!r}, 'w').write('ok')\n"
            "sys.exit(run_main('fer-test', body))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"line 0")
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert done.read_text() == "ok"
