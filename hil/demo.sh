#!/usr/bin/env bash
# The whole chain on this machine: simulated meters -> agent -> local Mosquitto -> platform simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hil/bootstrap.sh
exec .venv/bin/energy-agent demo "$@"
