"""npuclient is the thin side: it must import and work without OpenVINO installed."""

from __future__ import annotations

import subprocess
import sys

BLOCK_OPENVINO = """
import sys
for name in ("openvino", "openvino_genai", "openvino_tokenizers"):
    sys.modules[name] = None  # makes any `import openvino...` raise ImportError
import npuclient
from npuclient.protocol import JobResult, encode_line
from npuclient.errors import ERRORS_BY_CODE
assert not any(m.startswith("openvino") and sys.modules[m] is not None for m in sys.modules)
assert "npud" not in sys.modules
print("ok", len(ERRORS_BY_CODE))
"""


def test_npuclient_imports_without_openvino() -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCK_OPENVINO], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok 15"


def test_daemon_modules_import_openvino_lazily() -> None:
    code = "import sys, npud.server, npud.rpc, npud.worker, npud.engine; print('openvino' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
