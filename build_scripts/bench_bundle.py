"""Measure a built bundle: size, installer sizes, glibc it needs, start-up times.

    python build_scripts/bench_bundle.py [--bundle dist/PerturbStudio] [--runs 3]

The numbers in docs/INSTALL.md come from this script. Start-up times:

- ``cli``: ``perturb-studio --help`` (bootloader + Python + argument parsing), wall time;
- ``gui``: launch to the main window shown and the event loop entered (the app quits at that
  point when PERTURB_STUDIO_EXIT_AFTER_SHOW is set), on Xvfb when installed, else off-screen;
- ``selftest``: the whole ``--selftest``.

"cold" is the first run after dropping the page cache (only possible as root on a real machine;
otherwise the first run after the build, when the files are usually still cached, and it says so).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build_scripts"))
from build import dir_size, glibc_required  # noqa: E402


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def glibc_objdump(bundle: Path) -> str | None:
    """Max GLIBC_x.y over `objdump -T` of every ELF file (cross-check of build.glibc_required)."""
    if not shutil.which("objdump"):
        return None
    best = (0, 0)
    pat = re.compile(r"GLIBC_(\d+)\.(\d+)")
    for p in bundle.rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        with open(p, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
        out = subprocess.run(["objdump", "-T", str(p)], capture_output=True, text=True).stdout
        for m in pat.finditer(out):
            best = max(best, (int(m.group(1)), int(m.group(2))))
    return f"{best[0]}.{best[1]}"


def components(bundle: Path, top: int = 12) -> list[tuple[str, int]]:
    internal = bundle / "_internal"
    sizes = {}
    for p in internal.iterdir():
        if p.is_symlink():  # PyInstaller links top-level .so names into the package folders
            continue
        sizes[p.name] = dir_size(p) if p.is_dir() else p.stat().st_size
    return sorted(sizes.items(), key=lambda kv: -kv[1])[:top]


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "NUMBA_", "MPLCONFIG"))}
    env["HOME"] = str(home)
    env.pop("XDG_CACHE_HOME", None)
    return env


def time_cmd(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   timeout=600)
    return time.perf_counter() - t


def gui_time(exe: Path, env: dict[str, str]) -> float:
    """Launch -> main window shown -> event loop entered (app/__main__.py quits right there when
    PERTURB_STUDIO_EXIT_AFTER_SHOW is set), wall time."""
    env = {**env, "PERTURB_STUDIO_EXIT_AFTER_SHOW": "1"}
    t = time.perf_counter()
    proc = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"GUI exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "dist" / "PerturbStudio")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-gui", action="store_true")
    ap.add_argument("--no-selftest", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    bundle = args.bundle.resolve()
    exe = bundle / ("perturb-studio.exe" if sys.platform == "win32" else "perturb-studio")
    res: dict = {"bundle": str(bundle)}
    res["bundle_bytes"] = dir_size(bundle)
    res["bundle_files"] = sum(1 for p in bundle.rglob("*") if p.is_file())
    res["components"] = components(bundle)
    dist = bundle.parent
    for pattern, key in (("perturb-studio-*.tar.gz", "tarball"), ("perturb-studio_*.deb", "deb")):
        found = sorted(dist.glob(pattern))
        if found:
            res[key] = {"file": found[-1].name, "bytes": found[-1].stat().st_size}
    if sys.platform.startswith("linux"):
        res["glibc_scan"] = ".".join(map(str, glibc_required(bundle)))
        res["glibc_objdump"] = glibc_objdump(bundle)

    home = Path(tempfile.mkdtemp(prefix="perturb-bench-home-"))
    env = env_for(home)
    cold = drop_caches()
    res["cold_is_real"] = cold
    try:
        cli = [time_cmd([str(exe), "--help"], env) for _ in range(args.runs)]
        res["cli_help_s"] = {"first": cli[0], "median_warm": statistics.median(cli[1:] or cli)}
    except subprocess.CalledProcessError as exc:
        print(f"`perturb-studio --help` failed (rc={exc.returncode}); no CLI timing")

    if not args.no_gui:
        server = None
        if shutil.which("Xvfb"):  # a real X server: exercises the bundled xcb platform plugin
            display = ":97"
            server = subprocess.Popen(["Xvfb", display, "-screen", "0", "1600x1000x24",
                                       "-nolisten", "tcp"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            genv, how = {**env, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}, "Xvfb (xcb)"
        else:
            genv, how = {**env, "QT_QPA_PLATFORM": "offscreen"}, "offscreen"
        try:
            if cold:
                drop_caches()
            gui = [gui_time(exe, genv) for _ in range(args.runs)]
        finally:
            if server is not None:
                server.terminate()
                server.wait()
        res["gui_start_s"] = {"first": gui[0], "median_warm": statistics.median(gui[1:] or gui),
                              "how": how + ": launch -> main window shown"}

    if not args.no_selftest:
        res["selftest_s"] = time_cmd([str(exe), "--selftest"],
                                     {**env, "QT_QPA_PLATFORM": "offscreen"})
        res["selftest_cached_s"] = time_cmd([str(exe), "--selftest"],
                                            {**env, "QT_QPA_PLATFORM": "offscreen"})
    shutil.rmtree(home, ignore_errors=True)

    def mib(n: int) -> str:
        return f"{n / 2**20:,.0f} MiB"

    print(f"bundle        {mib(res['bundle_bytes'])} in {res['bundle_files']} files ({bundle})")
    for name, size in res["components"]:
        print(f"  {name:<40} {mib(size)}")
    for key in ("tarball", "deb"):
        if key in res:
            print(f"{key:<13} {mib(res[key]['bytes'])}  {res[key]['file']}")
    if "glibc_scan" in res:
        print(f"glibc needed  >= {res['glibc_scan']} (objdump -T: {res['glibc_objdump']})")
    if "cli_help_s" in res:
        c = res["cli_help_s"]
        print(f"cli --help    first {c['first']:.2f} s, warm median {c['median_warm']:.2f} s"
              f"{'' if cold else ' (page cache not dropped: first run is warm too)'}")
    if "gui_start_s" in res:
        g = res["gui_start_s"]
        print(f"gui start     first {g['first']:.2f} s, warm median {g['median_warm']:.2f} s "
              f"({g['how']})")
    if "selftest_s" in res:
        print(f"--selftest    {res['selftest_s']:.1f} s first (fresh numba cache), "
              f"{res['selftest_cached_s']:.1f} s second")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
