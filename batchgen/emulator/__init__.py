"""A fal-compatible queue, storage and media server (see docs/emulator.md).

app = create_app(EmulatorConfig(time_scale=0))           # in-process, with ASGITransport
async with serve(EmulatorConfig(), port=0) as url: ...    # over a real loopback socket
"""

from batchgen.emulator.app import create_app
from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.faults import PROFILES, FaultSpec, parse_faults
from batchgen.emulator.model import QueueModel
from batchgen.emulator.server import serve

__all__ = [
    "PROFILES",
    "EmulatorConfig",
    "FaultSpec",
    "QueueModel",
    "create_app",
    "parse_faults",
    "serve",
]
