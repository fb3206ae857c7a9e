#!/usr/bin/env bash
# The project's test command (README "Tests"): installs what the suite needs on a
# fresh Debian 12 machine, builds or reuses the real-kernel test bed, runs pytest.
# Extra arguments go to pytest, e.g. ./test.sh -k orphan
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
# A cell that fails to build must not hide the other results: pytest still runs
# (tests needing that cell fail on their own) and the failure decides the status.
bed_status=0
python3 -m vmcores build-all || bed_status=$?
test_status=0
python3 -m pytest -ra --durations=15 "$@" || test_status=$?
# The kernels proven, from the outcomes tests/test_matrix.py recorded.
python3 -m vmcores.proven || true
if ((bed_status)); then
    echo "test.sh: the test-bed matrix did not build completely (python3 -m vmcores build-all: exit $bed_status)" >&2
fi
exit $((test_status ? test_status : bed_status))
