"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib.metadata import version

from PIL import features


def machine_info() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "numpy": version("numpy"),
        "scipy": version("scipy"),
        "Pillow": version("Pillow"),
        "ImageHash": version("ImageHash"),
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loadavg_start": list(os.getloadavg()),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
