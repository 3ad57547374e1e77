"""What a stage asks an executor for, and the GPU check the driver makes for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from quantbench.executors.resources import GPU_DEVICE_NODES

PROBE = (
    "import sys\n"
    "from quantbench.executors.resources import gpus_visible\n"
    "print(gpus_visible(), 'torch' in sys.modules)\n"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="device files are Linux's")
def test_without_gpu_device_files_the_driver_does_not_import_torch() -> None:
    """A driver whose workers do all the model work decides 'no GPU' from /dev alone
    (importing torch costs it 3-7 s on 2 cores); with a device file it asks torch."""
    nodes = [n for pattern in GPU_DEVICE_NODES for n in Path("/dev").glob(pattern)]
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    visible, imported = result.stdout.split()
    if nodes:
        assert imported == "True"
    else:
        assert (visible, imported) == ("False", "False")
