"""Benchmark the desktop app: window start-up time and the longest event-loop stall while
generating 10,000 cells (and, separately, while the heatmap/DE/UMAP are computed afterwards).

    QT_QPA_PLATFORM=offscreen python build_scripts/bench_app.py [--model kang-ifnb-pbmc]
        [--cells 10000] [--repeats 3]

Start-up is measured two ways: in a fresh interpreter, from the first line of ``main`` to the
window being shown and painted (``import`` time of the app included), and the wall time of the
whole process ``python -m app`` with ``PERTURB_STUDIO_EXIT_AFTER_SHOW=1`` (interpreter start-up and
exit included). The stall is the longest gap between ticks of a 5 ms QTimer in the GUI thread,
minus the 5 ms period: what a user would feel as the window freezing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_STARTUP_CODE = r"""
import time
t0 = time.perf_counter()
import sys
from app.__main__ import make_app
app = make_app([])
from app.main_window import MainWindow
w = MainWindow()
w.show()
app.processEvents()
t_show = time.perf_counter() - t0
heavy = [m for m in ("torch", "anndata", "scanpy", "umap") if m in sys.modules]
print(f"{t_show:.4f} {','.join(heavy) or '-'}")
w.close()
"""


def measure_startup(repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PERTURB_STUDIO_EXIT_AFTER_SHOW": "1"}
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    shows, walls, heavy = [], [], "-"
    for _ in range(repeats):
        r = subprocess.run([sys.executable, "-c", _STARTUP_CODE], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=True)
        t, heavy = r.stdout.strip().splitlines()[-1].split()
        shows.append(float(t))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "app"], env=env, cwd=ROOT, check=True,
                       capture_output=True)
        walls.append(time.perf_counter() - t0)
    return {"window_shown_s": statistics.median(shows), "process_wall_s": statistics.median(walls),
            "heavy_modules_at_start": heavy}


class StallMeter:
    """Longest gap between ticks of a fast timer in the GUI thread."""

    def __init__(self, period_ms: int = 5) -> None:
        from PySide6.QtCore import QTimer

        self.period = period_ms / 1000
        self.timer = QTimer()
        self.timer.setInterval(period_ms)
        self.timer.timeout.connect(self._tick)
        self.reset()

    def reset(self) -> None:
        self.last = time.perf_counter()
        self.worst = 0.0
        self.ticks = 0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last - self.period)
        self.last = now
        self.ticks += 1

    def start(self) -> None:
        self.reset()
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return self.worst


def measure_stall(model: str | None, cells: int) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT))
    from app.__main__ import make_app

    app = make_app([])
    from app.main_window import MainWindow

    win = MainWindow()
    win.act_autosave.setChecked(False)
    win.show()

    def wait(pred, timeout):
        t0 = time.perf_counter()
        while not pred():
            app.processEvents()
            time.sleep(0.002)
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("benchmark timed out")

    flags = {}

    def flag(name):
        return lambda *a: flags.__setitem__(name, True)

    for sig in ("models_listed", "model_loaded", "generation_finished", "heatmap_updated",
                "umap_updated", "error_shown"):
        getattr(win, sig).connect(flag(sig))
    wait(lambda: "models_listed" in flags, 60)
    names = [i.name for i in win.models_page.infos]
    name = model or next((n for n in names if "kang" in n), names[0] if names else None)
    if name is None or not win.models_page.select(name):
        raise SystemExit(f"model {name!r} not found; installed: {names}")
    flags.pop("model_loaded", None)
    win.use_model(win.models_page.current())
    wait(lambda: "model_loaded" in flags, 120)
    c = win.compose_page
    space = win.model.space
    if space.cell_types:
        c.cell_type.setCurrentText(space.cell_types[0])
    if space.targets and c.perts.rows:
        c.perts.rows[0].target.setText(space.targets[0])
    per = cells // 2 if space.targets else cells  # condition + its control = `cells` cells
    c.n_cells.setValue(per)
    meter = StallMeter()
    meter.start()
    t0 = time.perf_counter()
    c.generate_btn.click()
    wait(lambda: "generation_finished" in flags or "error_shown" in flags, 600)
    gen_s = time.perf_counter() - t0
    gen_stall = meter.stop()
    if "error_shown" in flags:
        raise SystemExit(f"generation failed: {win.last_error}")
    n = win.experiment.adata.n_obs
    meter.start()
    t1 = time.perf_counter()
    wait(lambda: "heatmap_updated" in flags and "umap_updated" in flags, 600)
    post_s = time.perf_counter() - t1
    post_stall = meter.stop()
    win.close()
    return {"model": name, "device": getattr(win, "device_text", "?"), "cells_generated": n,
            "generation_s": round(gen_s, 2), "cells_per_s": round(n / gen_s, 1),
            "longest_stall_generating_ms": round(1000 * gen_stall, 1),
            "analysis_and_umap_s": round(post_s, 2),
            "longest_stall_analysis_umap_ms": round(1000 * post_stall, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    out = {}
    if not args.skip_startup:
        out["startup"] = measure_startup(args.repeats)
        s = out["startup"]
        print(f"start-up: window shown after {s['window_shown_s']:.2f} s (median of "
              f"{args.repeats}); whole 'python -m app' process {s['process_wall_s']:.2f} s; "
              f"heavy modules imported at start: {s['heavy_modules_at_start']}", flush=True)
    out["generation"] = g = measure_stall(args.model, args.cells)
    print(f"generation: {g['cells_generated']:,} cells with {g['model']} in {g['generation_s']} s "
          f"({g['cells_per_s']:,} cells/s, {g['device']})")
    print(f"longest event-loop stall while generating: {g['longest_stall_generating_ms']} ms")
    print(f"heatmap + DE + UMAP afterwards: {g['analysis_and_umap_s']} s, longest stall "
          f"{g['longest_stall_analysis_umap_ms']} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
