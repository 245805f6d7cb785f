"""Speed benchmarks: ``python scripts/bench.py [--quick] [--out runs/bench/speed.json]``.

Environment stepping (pure-JAX and PettingZoo), training throughput, JaxMARL's own IPPO as the
reference (``--jaxmarl-repo PATH``), scaling and compile times; see ``marl/bench.py`` and
``BENCHMARKS.md``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from marl.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
