import json
import subprocess
import sys


def _dfrt(*args):
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", *args], capture_output=True, text=True, check=False
    )


def test_info_json_is_one_document():
    result = _dfrt("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["configs"]["paper"]["tokens_32_frames"] == 604
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]


def test_usage_error_exits_2():
    result = _dfrt("frobnicate")
    assert result.returncode == 2
