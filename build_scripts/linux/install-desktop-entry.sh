#!/bin/sh
# Perturb Studio from the .tar.gz: add a menu entry and put `perturb-studio` on your PATH,
# for the current user only (no root needed). Run it from the unpacked PerturbStudio folder:
#     ./install-desktop-entry.sh            install
#     ./install-desktop-entry.sh --remove   undo
# The folder itself is not moved: keep it where it is (for example ~/Applications/PerturbStudio).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
desktop="$data/applications/perturb-studio.desktop"
icon="$data/icons/hicolor/256x256/apps/perturb-studio.png"
link="$HOME/.local/bin/perturb-studio"

if [ "${1:-}" = "--remove" ]; then
    rm -f "$desktop" "$icon"
    [ -L "$link" ] && rm -f "$link"
    echo "removed the Perturb Studio menu entry and $link"
    exit 0
fi

[ -x "$here/perturb-studio" ] || { echo "run this script from the PerturbStudio folder" >&2; exit 1; }
mkdir -p "$(dirname "$desktop")" "$(dirname "$icon")" "$(dirname "$link")"
cp "$here/perturb-studio.png" "$icon"
cat > "$desktop" <<DESKTOP
[Desktop Entry]
Type=Application
Version=1.5
Name=Perturb Studio
GenericName=Single-cell perturbation simulator
Comment=In-silico single-cell perturbation experiments with generative models
Exec="$here/perturb-studio" %f
Icon=perturb-studio
Terminal=false
Categories=Science;Biology;
StartupNotify=true
StartupWMClass=perturb-studio
DESKTOP
ln -sfn "$here/perturb-studio" "$link"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$data/applications" || true
echo "Perturb Studio added to the application menu; '$link' points at this folder."
case ":$PATH:" in *":$HOME/.local/bin:"*) ;; *) echo "add ~/.local/bin to your PATH to type 'perturb-studio'." ;; esac
