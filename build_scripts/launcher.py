"""Entry script frozen by PyInstaller (build_scripts/perturb_studio.spec).

One executable serves everything: ``perturb-studio`` alone opens the GUI, ``perturb-studio
<subcommand> ...`` runs the CLI (engine.cli) and ``perturb-studio --selftest`` checks the bundle.
The dispatch lives in app/__main__.py so that the frozen program and ``pip install -e .`` behave
the same.
"""

from __future__ import annotations

import multiprocessing
import sys

if __name__ == "__main__":
    # Frozen programs must call this before anything else spawns a worker process (joblib, torch
    # DataLoader workers, pyqtgraph.multiprocess), or the child re-runs the whole program.
    multiprocessing.freeze_support()
    from app.__main__ import main

    sys.exit(main())
