import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


def test_runtime_imports_without_torch_or_onnx():
    """The runtime ships to Jetson without torch or onnx: block them and import everything in it."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "onnxscript"):
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import dfrt.runtime
        for info in pkgutil.walk_packages(dfrt.runtime.__path__, "dfrt.runtime."):
            importlib.import_module(info.name)
        import dfrt.config, dfrt.errors, dfrt.cli
        # the demo's world, evaluation and default bundle run on the runtime too (dfrt eval, dfrt infer)
        import dfrt.demo.world, dfrt.demo.evaluate, dfrt.runtime.default_bundle, dfrt.commands.eval
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
