#!/bin/sh
# Remove energy-agent from a gateway. Run as root:   sudo sh systemd/uninstall.sh
#
# Keeps /etc/energy-agent (config, signing key) and /var/lib/energy-agent (the store with any
# unsent backlog) unless --purge is given, and keeps the energy-agent user so a reinstall
# finds its files owned correctly.
#
# Options:
#   --purge          also delete config, key, data and the user
#   --no-systemctl   do not run systemctl; print it instead
# Environment:
#   DESTDIR          remove from under this directory; user and systemctl steps are printed
set -eu

NAME=energy-agent
DESTDIR=${DESTDIR:-}
PURGE=0
RUN_SYSTEMCTL=1

say() { printf 'uninstall: %s\n' "$*"; }
host() {
    if [ -n "$DESTDIR" ] || [ "$RUN_SYSTEMCTL" -eq 0 ]; then
        printf 'uninstall: would run: %s\n' "$*"
    else
        say "run: $*"
        "$@" || say "(ignored: $* failed)"
    fi
}

for arg in "$@"; do
    case $arg in
        --purge) PURGE=1 ;;
        --no-systemctl) RUN_SYSTEMCTL=0 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
                   exit 0 ;;
        *) printf 'uninstall: error: unknown option %s\n' "$arg" >&2; exit 1 ;;
    esac
done
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    printf 'uninstall: error: run as root\n' >&2
    exit 1
fi

if [ -n "$DESTDIR" ] || [ -d /run/systemd/system ]; then
    host systemctl disable --now "$NAME" "$NAME-web"
fi
rm -f "$DESTDIR/etc/systemd/system/$NAME.service" "$DESTDIR/etc/systemd/system/$NAME-web.service"
host systemctl daemon-reload
rm -rf "$DESTDIR/opt/$NAME"
say "removed /opt/$NAME and the unit"

if [ "$PURGE" -eq 1 ]; then
    rm -rf "$DESTDIR/etc/$NAME" "$DESTDIR/var/lib/$NAME"
    say "purged /etc/$NAME and /var/lib/$NAME"
    if [ -n "$DESTDIR" ]; then
        printf 'uninstall: would run: userdel %s\n' "$NAME"
    elif getent passwd "$NAME" >/dev/null; then
        say "run: userdel $NAME"
        userdel "$NAME"
    fi
else
    say "kept /etc/$NAME and /var/lib/$NAME (use --purge to delete them)"
fi
