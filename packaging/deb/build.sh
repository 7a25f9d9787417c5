#!/bin/sh
# Build dist/mailmand_<version>_<arch>.deb from PyInstaller's one-directory
# build, with dpkg-deb only: nothing is downloaded.
#
#   pyinstaller --noconfirm build.spec && packaging/deb/build.sh [ONEDIR] [OUTDIR]
#
# The one-directory build goes to /usr/lib/mailmand; /usr/bin/mailmand,
# mailmand-sendmail and mailmand-mailq are links into it. Nothing is unpacked
# at start (the one-file binary unpacks itself every time), and a link, unlike
# a shell wrapper, costs no extra exec: sendmail is called once per message.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
onedir=${1:-$root/dist/mailmand-dir}
outdir=${2:-$root/dist}
binary=$onedir/mailmand
[ -x "$binary" ] || { echo "build.sh: no one-directory build at $onedir: run pyinstaller build.spec first" >&2; exit 1; }

# "mailmand 0.1.0 (abc1234)": the binary itself says which version it is.
version=$("$binary" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/pkg

mkdir -p "$pkg/usr/lib" "$pkg/usr/bin"
cp -a "$onedir" "$pkg/usr/lib/mailmand"
chmod -R u=rwX,go=rX "$pkg/usr/lib/mailmand"
chmod 0755 "$pkg/usr/lib/mailmand/mailmand"
# One program; the name it is called by picks the command (mailmand/__main__.py).
for name in mailmand mailmand-sendmail mailmand-mailq; do
    ln -s ../lib/mailmand/mailmand "$pkg/usr/bin/$name"
done
install -D -m 0644 "$root/packaging/systemd/mailmand.service" "$pkg/lib/systemd/system/mailmand.service"
install -D -m 0644 "$root/packaging/systemd/mailmand.tmpfiles" "$pkg/usr/lib/tmpfiles.d/mailmand.conf"
install -D -m 0644 "$root/packaging/systemd/mailmand.sysusers" "$pkg/usr/lib/sysusers.d/mailmand.conf"
# 0640: it may hold a password; postinst gives it to group mailmand, whose
# members (the applications) read it to find the spool.
install -D -m 0640 "$root/config/mailmand.yaml" "$pkg/etc/mailmand/mailmand.yaml"
install -D -m 0644 "$root/docs/install.md" "$pkg/usr/share/doc/mailmand/install.md"

mkdir -p "$pkg/DEBIAN"
echo /etc/mailmand/mailmand.yaml > "$pkg/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$pkg/DEBIAN/$script"
done
cat > "$pkg/DEBIAN/control" <<CTL
Package: mailmand
Version: $version
Architecture: $arch
Maintainer: mailmand developers <mailmand@localhost>
Installed-Size: $(du -sk "$pkg" | cut -f1)
Depends: passwd
Recommends: systemd
Section: mail
Priority: optional
Description: mail queue daemon: applications enqueue, mailmand delivers
 Keeps mail safe in a local spool, sends it over SMTP to a relay at the time
 asked, retries what can pass and records every attempt. Self-contained
 (no Python needed) with a systemd unit; members of group mailmand may
 enqueue. Provides sendmail(8) and mailq(1) as alternatives of low priority.
CTL

mkdir -p "$outdir"
deb=$outdir/mailmand_${version}_${arch}.deb
# gzip: the binary is compressed already, and xz takes 10 s to gain little.
dpkg-deb --root-owner-group -Zgzip --build "$pkg" "$deb" >/dev/null
echo "$deb"
