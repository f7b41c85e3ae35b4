#!/bin/sh
# install-if-absent.sh SRC DEST MODE
#
# A meson install script: installs SRC as DEST (an absolute path, under
# $DESTDIR when set) with MODE, unless DEST already exists. Meson has no
# notion of configuration files and install_data() overwrites, so this is
# what keeps an operator's edited /etc/mnistd/mnistd.json across reinstalls
# and upgrades. A package build installs into an empty DESTDIR and so still
# ships the file.
set -eu

src=$1
dest=${DESTDIR:-}$2
mode=$3

if [ -e "$dest" ] || [ -L "$dest" ]; then
	echo "Keeping $dest (it exists; the new default is $src)"
	exit 0
fi
if [ -n "${MESON_INSTALL_DRY_RUN:-}" ]; then
	echo "Would install $src to $dest"
	exit 0
fi
mkdir -p "$(dirname "$dest")"
# Copy to a temporary name and rename, so DEST is never half written.
tmp="$dest.meson-tmp.$$"
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
chmod "$mode" "$tmp"
mv "$tmp" "$dest"
trap - EXIT
echo "Installing $src to $dest"
