#!/usr/bin/env bash
# The project's test command (README "Tests"): installs what the suite needs on a
# fresh Debian 12 machine, builds or reuses the real-kernel test bed, runs pytest.
# Extra arguments go to pytest, e.g. ./test.sh -k orphan
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
python3 -m vmcores build-all
python3 -m pytest -ra "$@"
