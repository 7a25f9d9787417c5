#!/bin/sh
# Build dist/mailmand_<version>_<arch>.deb from the PyInstaller binary, with
# dpkg-deb only: nothing is downloaded.
#
#   pyinstaller --noconfirm build.spec && packaging/deb/build.sh [BINARY] [OUTDIR]
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=${1:-$root/dist/mailmand}
outdir=${2:-$root/dist}
[ -x "$binary" ] || { echo "build.sh: no binary at $binary: run pyinstaller build.spec first" >&2; exit 1; }

# "mailmand 0.1.0 (abc1234)": the binary itself says which version it is.
version=$("$binary" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/pkg

install -D -m 0755 "$binary" "$pkg/usr/bin/mailmand"
install -D -m 0755 /dev/null "$pkg/usr/bin/mailmand-sendmail"
cat > "$pkg/usr/bin/mailmand-sendmail" <<'SH'
#!/bin/sh
# sendmail(8) interface of mailmand: queues the message on the local spool.
exec /usr/bin/mailmand sendmail "$@"
SH
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
 asked, retries what can pass and records every attempt. A single binary
 with a systemd unit; members of group mailmand may enqueue.
CTL

mkdir -p "$outdir"
deb=$outdir/mailmand_${version}_${arch}.deb
# gzip: the binary is compressed already, and xz takes 10 s to gain little.
dpkg-deb --root-owner-group -Zgzip --build "$pkg" "$deb" >/dev/null
echo "$deb"
