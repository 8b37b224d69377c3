"""Build the Perturb Studio bundle and its installers (`make bundle`).

    python build_scripts/build.py                 # bundle + the installers for this platform
    python build_scripts/build.py --no-installers # just dist/PerturbStudio/
    python build_scripts/build.py --clean         # throw away PyInstaller's cache first
    python build_scripts/build.py --installers-only  # repackage the existing dist/PerturbStudio

What comes out, in dist/:

    Linux    PerturbStudio/                         one-folder bundle (run PerturbStudio/perturb-studio)
             perturb-studio-<ver>-linux-<arch>.tar.gz  that folder, plus install-desktop-entry.sh
             perturb-studio_<ver>_<debarch>.deb     /opt/perturb-studio, /usr/bin/perturb-studio,
                                                    desktop entry and icon (built with dpkg-deb)
    Windows  PerturbStudio/                         PerturbStudio.exe (GUI) + perturb-studio.exe (CLI)
             perturb-studio-<ver>-windows-<arch>.zip
             PerturbStudio-<ver>-setup.exe          Inno Setup installer, when ISCC.exe is found
                                                    (build_scripts/installer_windows.iss)
    macOS    PerturbStudio.app                      the .app bundle (Contents/MacOS/perturb-studio)
             PerturbStudio-<ver>-macos-<arch>.dmg   made with hdiutil; signed when
                                                    PERTURB_STUDIO_CODESIGN_IDENTITY is set

The bundle carries whatever torch is installed in the build environment. Build with the CPU wheel
(`pip install torch --index-url https://download.pytorch.org/whl/cpu`): a CUDA torch makes the
bundle several GB. GPU users install from source instead (README). `--allow-cuda` overrides the
check.

Only the standard library is used here (plus PyInstaller, run as a subprocess), so the script
runs on any build machine that has the project's virtual environment.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "build_scripts" / "perturb_studio.spec"
LINUX_DIR = ROOT / "build_scripts" / "linux"
ISS = ROOT / "build_scripts" / "installer_windows.iss"
DIST = ROOT / "dist"
WORK = ROOT / "build"
APP_NAME = "PerturbStudio"  # folder / .app name
PKG_NAME = "perturb-studio"  # executable, Debian package, command on PATH
INSTALL_PREFIX = "/opt/perturb-studio"  # where the .deb puts the bundle

# What the bundle needs from a Linux system besides glibc: the C++ runtime (left out of the bundle,
# see _SYSTEM_LIBS in the spec), OpenGL/EGL (never bundled: they must match the local driver) and
# the X11/xcb, font and D-Bus libraries that Qt's platform plugins use (bundled copies exist, but
# the system's are preferred where present). A desktop install has all of these already.
DEB_DEPENDS = [
    "libstdc++6 (>= 11)", "libgcc-s1", "libexpat1", "libgl1", "libegl1", "libfontconfig1", "libfreetype6", "libxkbcommon0", "libxkbcommon-x11-0",
    "libdbus-1-3", "libglib2.0-0t64 | libglib2.0-0", "libx11-6", "libx11-xcb1", "libxcb1",
    "libxcb-cursor0", "libxcb-icccm4", "libxcb-image0", "libxcb-keysyms1", "libxcb-randr0",
    "libxcb-render-util0", "libxcb-shape0", "libxcb-xfixes0", "libxcb-xkb1",
]

IS_WIN = sys.platform == "win32"
IS_MAC = sys.platform == "darwin"
IS_LINUX = sys.platform.startswith("linux")


def log(msg: str) -> None:
    print(f"[build] {msg}", flush=True)


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]


def machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "arm64", "aarch64": "aarch64"}.get(m, m)


def dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


# -- checks ----------------------------------------------------------------------------------------


def check_environment(allow_cuda: bool) -> None:
    """Refuse a CUDA torch (a multi-GB bundle) and warn when no shipped model is present."""
    probe = ("import json, torch; print(json.dumps({'v': torch.__version__, "
             "'cuda': torch.version.cuda}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"[build] torch is not importable in {sys.executable}:\n{out.stderr}")
    info = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    log(f"python {platform.python_version()} ({sys.executable}), torch {info['v']}")
    if info["cuda"] and not allow_cuda:
        sys.exit(
            f"[build] torch {info['v']} is a CUDA build (CUDA {info['cuda']}); the bundle would be "
            "several GB. Install the CPU wheel first:\n"
            "    pip install --force-reinstall torch --index-url "
            "https://download.pytorch.org/whl/cpu\n"
            "or pass --allow-cuda if you really want a GPU bundle.")
    models = ROOT / "resources" / "models"
    shipped = [p for p in models.iterdir() if p.is_dir()] if models.is_dir() else []
    if not shipped:
        log("WARNING: resources/models/ holds no model; the bundle will ship without one "
            "(run `make models` first)")
    else:
        log(f"shipping {len(shipped)} model(s): {', '.join(sorted(p.name for p in shipped))}")
    if not (ROOT / "app" / "__main__.py").is_file():
        log("WARNING: app/__main__.py is missing; the frozen program will not start")


# -- the bundle ------------------------------------------------------------------------------------


def run_pyinstaller(clean: bool) -> Path:
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
           "--distpath", str(DIST), "--workpath", str(WORK / "pyinstaller"), str(SPEC)]
    if clean:
        cmd.insert(3, "--clean")
    log("running " + " ".join(cmd[1:]))
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    log(f"PyInstaller finished in {time.perf_counter() - t:.0f} s")
    bundle = DIST / APP_NAME
    exe = bundle / (f"{PKG_NAME}.exe" if IS_WIN else PKG_NAME)
    if not exe.is_file():
        sys.exit(f"[build] expected executable not found: {exe}")
    log(f"bundle: {bundle} ({mib(dir_size(bundle))})")
    return bundle


def bundle_icon_png() -> Path:
    """The 256 px PNG icon for desktop entries: resources/icons/perturb-studio.png, or any PNG in
    resources/icons, or a generated placeholder (so the .deb never lacks an icon)."""
    icons = ROOT / "resources" / "icons"
    preferred = icons / f"{PKG_NAME}.png"
    if preferred.is_file():
        return preferred
    pngs = sorted(icons.glob("*.png"), key=lambda p: -p.stat().st_size) if icons.is_dir() else []
    if pngs:
        return pngs[0]
    out = WORK / "icon" / f"{PKG_NAME}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    _placeholder_icon(out)
    log(f"no icon in resources/icons: generated a placeholder {out}")
    return out


def _placeholder_icon(path: Path) -> None:
    from PIL import Image, ImageDraw  # Pillow is installed with matplotlib

    size = 256
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((8, 8, size - 8, size - 8), radius=48, fill=(32, 86, 140, 255))
    for i, (x, y, r) in enumerate([(80, 96, 30), (150, 80, 24), (170, 160, 34), (96, 170, 22)]):
        colour = (250, 180, 60, 255) if i == 2 else (230, 240, 250, 255)
        d.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    img.save(path)


def fill_template(path: Path, **values: str) -> str:
    text = path.read_text("utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise RuntimeError(f"{path.name}: unfilled placeholders {left}")
    return text


# -- Linux -----------------------------------------------------------------------------------------


_GLIBC_RE = re.compile(rb"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?(?![\w.])")


def glibc_required(bundle: Path) -> tuple[int, ...]:
    """Highest GLIBC_x.y symbol version any ELF file in the bundle asks for.

    Same answer as ``objdump -T <file> | grep GLIBC_`` over every file, without needing binutils:
    the version names a library needs are stored as plain strings in its .dynstr section.
    """
    best: tuple[int, ...] = (2, 0)
    for p in bundle.rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        with open(p, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
            data = fh.read()
        for m in _GLIBC_RE.finditer(data):
            v = tuple(int(g) for g in m.groups() if g is not None)
            best = max(best, v)
    return best


def add_user_install_script(bundle: Path) -> None:
    """install-desktop-entry.sh at the top of the tarball's folder, for installs without root."""
    src = LINUX_DIR / "install-desktop-entry.sh"
    dst = bundle / "install-desktop-entry.sh"
    shutil.copy2(src, dst)
    dst.chmod(0o755)
    shutil.copy2(bundle_icon_png(), bundle / f"{PKG_NAME}.png")


def make_tarball(bundle: Path, ver: str) -> Path:
    out = DIST / f"{PKG_NAME}-{ver}-linux-{machine()}.tar.gz"
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    if shutil.which("tar"):
        # GNU tar + gzip is several times faster than tarfile; --owner/--group keep root out of it.
        subprocess.run(["tar", "--owner=0", "--group=0", "--numeric-owner", "-czf", str(out),
                        "-C", str(bundle.parent), bundle.name], check=True)
    else:
        with tarfile.open(out, "w:gz", compresslevel=6) as tar:
            tar.add(bundle, arcname=bundle.name)
    log(f"tarball: {out.name} ({mib(out.stat().st_size)}, {time.perf_counter() - t:.0f} s)")
    return out


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def deb_arch() -> str:
    if shutil.which("dpkg"):
        out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine(), machine())


def stage_deb(bundle: Path, ver: str) -> Path | None:
    """The package's file tree under build/deb/ (hard links into the bundle) with DEBIAN/control."""
    if not shutil.which("dpkg-deb"):
        log("dpkg-deb not found: skipping the .deb (apt-get install dpkg)")
        return None
    arch = deb_arch()
    root = WORK / "deb" / f"{PKG_NAME}_{ver}_{arch}"
    if root.exists():
        shutil.rmtree(root)
    opt = root / INSTALL_PREFIX.lstrip("/")
    opt.parent.mkdir(parents=True)
    # Hard links: no second GB on disk, and quick. The tarball-only extras stay out of the .deb.
    shutil.copytree(bundle, opt, symlinks=True, copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns("install-desktop-entry.sh", f"{PKG_NAME}.png"))

    bindir = root / "usr" / "bin"
    bindir.mkdir(parents=True)
    launcher = bindir / PKG_NAME
    launcher.write_text(f'#!/bin/sh\nexec {INSTALL_PREFIX}/{PKG_NAME} "$@"\n')
    launcher.chmod(0o755)

    apps = root / "usr" / "share" / "applications"
    apps.mkdir(parents=True)
    (apps / f"{PKG_NAME}.desktop").write_text(
        fill_template(LINUX_DIR / f"{PKG_NAME}.desktop", EXEC=PKG_NAME, ICON=PKG_NAME))
    icon_dir = root / "usr" / "share" / "icons" / "hicolor" / "256x256" / "apps"
    icon_dir.mkdir(parents=True)
    shutil.copyfile(bundle_icon_png(), icon_dir / f"{PKG_NAME}.png")
    svg = ROOT / "resources" / "icons" / f"{PKG_NAME}.svg"
    if svg.is_file():
        scalable = root / "usr" / "share" / "icons" / "hicolor" / "scalable" / "apps"
        scalable.mkdir(parents=True)
        shutil.copyfile(svg, scalable / svg.name)
    doc = root / "usr" / "share" / "doc" / PKG_NAME
    doc.mkdir(parents=True)
    shutil.copyfile(LINUX_DIR / "copyright", doc / "copyright")

    # dpkg wants sane permissions: everything world-readable, directories 755.
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        if p.is_dir():
            p.chmod(0o755)
        else:
            want = mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
            want &= ~(stat.S_IWGRP | stat.S_IWOTH)
            if want != stat.S_IMODE(mode):
                p.chmod(stat.S_IMODE(want))

    glibc = ".".join(map(str, glibc_required(bundle)))
    installed_kib = (dir_size(root) + 1023) // 1024
    debian = root / "DEBIAN"
    debian.mkdir()
    (debian / "control").write_text(fill_template(
        LINUX_DIR / "control.in", PACKAGE=PKG_NAME, VERSION=ver, ARCH=arch,
        INSTALLED_SIZE=str(installed_kib),
        DEPENDS=", ".join([f"libc6 (>= {glibc})", *DEB_DEPENDS])))
    log(f"deb staged: needs glibc >= {glibc}, {installed_kib / 1024:,.0f} MiB installed")
    return root


def build_deb(root: Path, compression: str) -> Path:
    out = DIST / f"{root.name}.deb"
    out.unlink(missing_ok=True)
    cmd = ["dpkg-deb", "--root-owner-group", f"-Z{compression}"]
    if compression in ("gzip", "xz"):
        cmd.append("-z6")
    cmd += ["--build", str(root), str(out)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    log(f"deb: {out.name} ({mib(out.stat().st_size)}, {time.perf_counter() - t:.0f} s)")
    return out


# -- Windows ---------------------------------------------------------------------------------------


def find_iscc() -> str | None:
    found = shutil.which("iscc") or shutil.which("ISCC")
    if found:
        return found
    for base in (os.environ.get("ProgramFiles(x86)"), os.environ.get("ProgramFiles")):
        if base:
            cand = Path(base) / "Inno Setup 6" / "ISCC.exe"
            if cand.is_file():
                return str(cand)
    return None


def make_windows(bundle: Path, ver: str) -> list[Path]:
    out = []
    arch = "arm64" if machine() == "arm64" else "x64"
    zip_base = DIST / f"{PKG_NAME}-{ver}-windows-{arch}"
    out.append(Path(shutil.make_archive(str(zip_base), "zip", DIST, bundle.name)))
    log(f"zip: {out[-1].name} ({mib(out[-1].stat().st_size)})")
    iscc = find_iscc()
    if iscc is None:
        log("Inno Setup (ISCC.exe) not found: skipping the installer "
            "(install Inno Setup 6 from https://jrsoftware.org/isinfo.php)")
        return out
    subprocess.run([iscc, f"/DAppVersion={ver}", f"/DSourceDir={bundle}", f"/DOutputDir={DIST}",
                    str(ISS)], check=True)
    setup = DIST / f"{APP_NAME}-{ver}-setup.exe"
    if setup.is_file():
        out.append(setup)
        log(f"installer: {setup.name} ({mib(setup.stat().st_size)})")
    return out


# -- macOS -----------------------------------------------------------------------------------------


def make_macos(ver: str) -> list[Path]:
    app = DIST / f"{APP_NAME}.app"
    if not app.is_dir():
        sys.exit(f"[build] {app} was not built")
    identity = os.environ.get("PERTURB_STUDIO_CODESIGN_IDENTITY")
    if identity:
        # PyInstaller signed every binary with this identity (spec); seal the whole .app with the
        # hardened runtime so that it can be notarised (`xcrun notarytool submit ... --wait`,
        # then `xcrun stapler staple`).
        subprocess.run(["codesign", "--force", "--deep", "--options", "runtime", "--timestamp",
                        "--sign", identity, str(app)], check=True)
    else:
        log("not signed (set PERTURB_STUDIO_CODESIGN_IDENTITY): Gatekeeper will ask users to "
            "right-click > Open on first launch")
    dmg = DIST / f"{APP_NAME}-{ver}-macos-{machine()}.dmg"
    dmg.unlink(missing_ok=True)
    if not shutil.which("hdiutil"):
        log("hdiutil not found: skipping the .dmg")
        return [app]
    subprocess.run(["hdiutil", "create", "-volname", "Perturb Studio", "-srcfolder", str(app),
                    "-ov", "-format", "UDZO", str(dmg)], check=True)
    log(f"dmg: {dmg.name} ({mib(dmg.stat().st_size)})")
    return [app, dmg]


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-installers", action="store_true",
                    help="stop after the dist/PerturbStudio folder")
    ap.add_argument("--clean", action="store_true", help="empty PyInstaller's cache first")
    ap.add_argument("--installers-only", action="store_true",
                    help="reuse the existing dist/PerturbStudio (iterate on the installers)")
    ap.add_argument("--allow-cuda", action="store_true", help="bundle a CUDA torch anyway")
    ap.add_argument("--deb-compression", default="gzip", choices=["gzip", "xz", "zstd", "none"],
                    help="dpkg-deb compressor (gzip: fast and readable by every dpkg; "
                         "xz: ~15%% smaller, several minutes slower)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    ver = version()
    log(f"Perturb Studio {ver} on {platform.system()} {machine()}")
    check_environment(args.allow_cuda)
    if args.installers_only:
        bundle = DIST / APP_NAME
        if not bundle.is_dir():
            sys.exit(f"[build] --installers-only: {bundle} does not exist")
    else:
        bundle = run_pyinstaller(args.clean)

    artefacts: list[Path] = [bundle]
    if not args.no_installers:
        if IS_LINUX:
            # tar+gzip and dpkg-deb are each single-threaded: run them side by side, once the
            # .deb tree is staged (staging may chmod files that tar would be reading).
            root = stage_deb(bundle, ver)
            add_user_install_script(bundle)
            tarball: list[Path] = []
            tar_thread = threading.Thread(target=lambda: tarball.append(make_tarball(bundle, ver)))
            tar_thread.start()
            deb = build_deb(root, args.deb_compression) if root else None
            tar_thread.join()
            if root:
                # Only hard links into the bundle. Not removed earlier: unlinking changes the
                # files' link counts (ctime) and tar, still reading them, would fail.
                shutil.rmtree(root)
            if not tarball:
                sys.exit("[build] the tarball was not made (see the error above)")
            artefacts += tarball + ([deb] if deb else [])
        elif IS_WIN:
            artefacts += make_windows(bundle, ver)
        elif IS_MAC:
            artefacts += make_macos(ver)

    log(f"done in {time.perf_counter() - t0:.0f} s:")
    for p in artefacts:
        size = dir_size(p) if p.is_dir() else p.stat().st_size
        log(f"  {p.relative_to(ROOT)}  {mib(size)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
