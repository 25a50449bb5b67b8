#!/usr/bin/env bash
# `make test` after lint and `hack/sandbox up`. The sandbox suite waits on timers more than
# it computes, so it runs in two phases. Tests marked `exclusive` change the sandbox for
# everyone (they stop a component, or install cluster-wide objects or operators) and run
# alone, one at a time. The rest use their own namespace each and run on SANDBOX_WORKERS
# processes (default 3: they mostly wait, even on 2 cores). The unit tests run beside both phases.
# Arguments go to every pytest run (PYTEST_ARGS in the Makefile): use them to select (-k) or
# report (-x, -v), not to pass paths or -m, which would override the phases' own selection.
set -uo pipefail
cd "$(dirname "$0")/.."
pytest=.venv/bin/pytest
workers=${SANDBOX_WORKERS:-3}
unit_log=$(mktemp -t rewind-unit-tests.XXXXXX)

# Exit status 5 means "no tests selected" (say, -k matched none in one phase): not a failure.
ok() { [[ $1 -eq 0 || $1 -eq 5 ]]; }
elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

start=$SECONDS
"$pytest" tests/unit -q -p no:cacheprovider "$@" >"$unit_log" 2>&1 &
unit_pid=$!
echo "[test] unit tests running in the background (log: $unit_log)"

echo "[test] phase 1: sandbox tests that need the sandbox to themselves, one at a time"
"$pytest" tests/sandbox -m exclusive "$@"
exclusive=$?
exclusive_time=$((SECONDS - start))

echo "[test] phase 2: the other sandbox tests on $workers workers"
"$pytest" tests/sandbox -m "not exclusive" -n "$workers" --dist load "$@"
parallel=$?
parallel_time=$((SECONDS - start - exclusive_time))

wait "$unit_pid"
unit=$?
echo "[test] unit tests:"
if ok "$unit"; then
  tail -n 3 "$unit_log"
  rm -f "$unit_log"
else
  cat "$unit_log"  # every traceback; the log stays for the record
  echo "[test] unit test log kept: $unit_log"
fi

status=0
for phase in "unit:$unit" "exclusive:$exclusive" "parallel:$parallel"; do
  ok "${phase#*:}" || { echo "[test] FAILED: ${phase%%:*} tests (exit ${phase#*:})"; status=1; }
done
echo "[test] phase 1 $(elapsed $exclusive_time), phase 2 $(elapsed $parallel_time)," \
     "total $(elapsed $((SECONDS - start)))"
exit $status
