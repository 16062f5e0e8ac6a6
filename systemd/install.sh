#!/bin/sh
# Install or upgrade energy-agent on a Debian/Ubuntu gateway. Run as root from a checkout or
# an unpacked release:   sudo sh systemd/install.sh
#
# Re-running is an upgrade: the package is reinstalled into the venv, the unit is replaced,
# and the site's config, signing key and data are never touched.
#
# Options:
#   --no-systemctl   do not run systemctl (daemon-reload, try-restart); print it instead
#   --skip-venv      do not create the venv or run pip (used by tests/test_install.py, and
#                    when the venv is managed some other way)
#   -h, --help       this text
# Environment:
#   DESTDIR    lay everything under this directory instead of /; no useradd, chown or
#              systemctl is run — the commands are printed instead (image building, tests)
#   PKG        what pip installs (default: this checkout). E.g. a wheel for offline installs.
#   PIP_ARGS   extra pip arguments, e.g. "--no-index --find-links /media/usb/wheels"
#   PYTHON     interpreter that creates the venv (default python3; needs 3.11+)
#
# The laid-out tree is documented in docs/operations.md ("layout" block); the test suite
# compares the two, so change them together.
set -eu
# Files we create must be world-readable unless made stricter on purpose (the venv runs as
# energy-agent); a root shell with umask 077 would otherwise make the program unusable.
umask 022

NAME=energy-agent
OPT=/opt/$NAME
VENV=$OPT/venv
ETC=/etc/$NAME
STATE=/var/lib/$NAME
UNITDIR=/etc/systemd/system

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PKG=${PKG:-$SRC}
PIP_ARGS=${PIP_ARGS:-}
PYTHON=${PYTHON:-python3}
RUN_SYSTEMCTL=1
SKIP_VENV=0

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }
# Commands that change the host's user database or service manager: run them for real
# only when installing onto this machine, otherwise show what would be done.
host() {
    if [ -n "$DESTDIR" ]; then
        printf 'install: would run: %s\n' "$*"
    else
        say "run: $*"
        "$@"
    fi
}

for arg in "$@"; do
    case $arg in
        --no-systemctl) RUN_SYSTEMCTL=0 ;;
        --skip-venv) SKIP_VENV=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
                   exit 0 ;;
        *) die "unknown option $arg (try --help)" ;;
    esac
done

[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/systemd/$NAME.service" ] \
    || die "run me from a checkout or unpacked release (no pyproject.toml in $SRC)"
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo sh $0), or set DESTDIR to lay the files out elsewhere"
fi
if [ -n "$DESTDIR" ]; then
    case $DESTDIR in /*) ;; *) die "DESTDIR must be an absolute path, got $DESTDIR" ;; esac
    say "DESTDIR=$DESTDIR: laying files out there; user and systemctl steps are only printed"
fi

# --- the user -------------------------------------------------------------------------------
# A system user without login or home of its own; dialout owns the serial ports.
GROUPS_OPT="--groups dialout"
if [ -z "$DESTDIR" ] && ! getent group dialout >/dev/null; then
    say "WARNING: no group dialout here; give $NAME access to the serial ports yourself"
    GROUPS_OPT=""
fi
if [ -n "$DESTDIR" ] || ! getent passwd "$NAME" >/dev/null; then
    # shellcheck disable=SC2086 # GROUPS_OPT is empty or two words
    host useradd --system --user-group --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "energy-agent daemon" $GROUPS_OPT "$NAME"
else
    say "user $NAME exists"
    # Older installs or hand-made users may lack the group; adding it again is harmless.
    [ -z "$GROUPS_OPT" ] || host usermod --append --groups dialout "$NAME"
fi

# chown only when installing onto this machine (under DESTDIR the user may not exist).
own() {
    if [ -n "$DESTDIR" ]; then
        printf 'install: would run: chown %s %s\n' "$1" "$2"
    else
        chown "$1" "$DESTDIR$2"
    fi
}
make_dir() {  # make_dir MODE OWNER PATH — create or fix up (mode and owner are reset on upgrade)
    install -d -m "$1" "$DESTDIR$3"
    chmod "$1" "$DESTDIR$3"
    own "$2" "$3"
}
put_file() {  # put_file MODE OWNER SOURCE PATH — replace with the shipped version
    install -m "$1" "$3" "$DESTDIR$4"
    own "$2" "$4"
}

# --- program --------------------------------------------------------------------------------
make_dir 0755 root:root "$OPT"
make_dir 0755 root:root "$OPT/doc"
put_file 0644 root:root "$SRC/docs/operations.md" "$OPT/doc/operations.md"
put_file 0644 root:root "$SRC/docs/web.md" "$OPT/doc/web.md"
# The current example config, so a site can diff it against its own after an upgrade.
put_file 0644 root:root "$SRC/config/agent.example.toml" "$OPT/doc/agent.example.toml"

if [ "$SKIP_VENV" -eq 1 ]; then
    say "--skip-venv: not creating $VENV"
else
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than 3.11; install python3.11 or set PYTHON="
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
        || die "$PYTHON cannot create venvs: apt-get install python3-venv"
    # A venv whose interpreter vanished (OS upgrade to a new Python) cannot be repaired.
    if [ -e "$DESTDIR$VENV" ] && ! "$DESTDIR$VENV/bin/python" -c pass 2>/dev/null; then
        say "existing venv is broken, recreating it"
        rm -rf "$DESTDIR$VENV"
    fi
    if [ ! -e "$DESTDIR$VENV" ]; then
        say "creating $VENV"
        "$PYTHON" -m venv "$DESTDIR$VENV"
    fi
    say "installing $PKG into $VENV"
    # shellcheck disable=SC2086 # PIP_ARGS is a list of words on purpose
    "$DESTDIR$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade \
        $PIP_ARGS "$PKG"
fi

# --- configuration --------------------------------------------------------------------------
# Root owns it, the agent's group may read it, nobody else may: it names keys and hosts.
make_dir 0750 "root:$NAME" "$ETC"
if [ -e "$DESTDIR$ETC/agent.toml" ]; then
    say "keeping the existing $ETC/agent.toml"
else
    put_file 0640 "root:$NAME" "$SRC/config/agent.example.toml" "$ETC/agent.toml"
    say "installed an example $ETC/agent.toml — edit it before starting"
fi

# --- data -----------------------------------------------------------------------------------
make_dir 0750 "$NAME:$NAME" "$STATE"

# --- the unit -------------------------------------------------------------------------------
make_dir 0755 root:root "$UNITDIR"
put_file 0644 root:root "$SRC/systemd/$NAME.service" "$UNITDIR/$NAME.service"
# The web page (energy-agent serve): installed, never enabled here — the site decides.
put_file 0644 root:root "$SRC/systemd/$NAME-web.service" "$UNITDIR/$NAME-web.service"

if [ -z "$DESTDIR" ] && [ ! -e /proc/self/ns/user ]; then
    say "WARNING: this kernel has no user namespaces; the unit's PrivateUsers=yes would fail"
    say "  (status=217/USER). Run: systemctl edit $NAME   and add:  [Service] PrivateUsers=no"
fi

if [ -n "$DESTDIR" ] || [ "$RUN_SYSTEMCTL" -eq 0 ]; then
    printf 'install: would run: systemctl daemon-reload\n'
    printf 'install: would run: systemctl try-restart %s %s-web\n' "$NAME" "$NAME"
elif [ -d /run/systemd/system ]; then
    host systemctl daemon-reload
    # Restarts only if it was running: an upgrade takes effect, a fresh install waits for
    # the config to be edited.
    host systemctl try-restart "$NAME" "$NAME-web"
else
    say "systemd is not running here; skipped systemctl daemon-reload"
fi

cat <<EOF

energy-agent is installed. Next steps (docs: $OPT/doc/operations.md):
  1. Edit $ETC/agent.toml (gateway, enterprise code, platform, buses, meters).
  2. Create the signing key and register the printed public key with the platform:
       $VENV/bin/energy-agent keygen
       chown $NAME:$NAME $ETC/signing.key
  3. Check the config and read each meter once:
       $VENV/bin/energy-agent check-config -c $ETC/agent.toml
       $VENV/bin/energy-agent probe METER -c $ETC/agent.toml
  4. Start it now and at every boot:
       systemctl enable --now $NAME
       journalctl -u $NAME -f
  5. Optional, the energy manager's web page (docs: $OPT/doc/web.md; 127.0.0.1:8640 unless
     [web] in agent.toml gives TLS and a login):
       $VENV/bin/energy-agent web-passwd -c $ETC/agent.toml
       systemctl enable --now $NAME-web
EOF
