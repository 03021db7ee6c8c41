"""How long an emulated request runs: the latency model, before the time scale.

gpt-image-2 takes seconds to minutes on fal (reports put a high-quality image at one to four
minutes). The model: a base time
per quality for one 1-megapixel image, growing with the square root of the pixel count and by 30 %
per extra image, with ±25 % seeded jitter so runs do not finish in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from batchgen.planning import gptimage

INVALID_RUN_S = 0.2  # validation fails fast: no image is generated
# Seconds for one 1-megapixel image at each quality (gpt-image-2 takes seconds to minutes).
BASE_RUN_S: Mapping[str, float] = {"low": 4.0, "medium": 12.0, "high": 30.0}
JITTER = 0.25  # run times vary ±25 %


def run_time_for(endpoint: str, body: Mapping[str, Any], rng: random.Random) -> float:
    """Unscaled seconds one request takes: quality × √megapixels × image count, ± jitter."""
    req = gptimage.with_defaults(endpoint, body)
    base = BASE_RUN_S.get(str(req.get("quality", "high")), BASE_RUN_S["high"])
    w, h = gptimage.resolved_dimensions(req.get("image_size")) or (1024, 1024)
    megapixels = (w * h) / 1_048_576
    n = req.get("num_images", 1)
    count = n if isinstance(n, int) and 1 <= n <= 4 else 1
    seconds = base * megapixels**0.5 * (1 + 0.3 * (count - 1))
    return float(seconds * rng.uniform(1 - JITTER, 1 + JITTER))
