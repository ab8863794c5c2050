#!/bin/sh
# One-shot operator for docker-compose.yml: start the demo run (once, by name), follow it
# to its end, print its summary, and exit 0 only if it completed.
#
#   demo-run.sh [OPTIONS OF `cohort admin runs start`]
#
# A second `docker compose up` finds the run by its name and follows it again instead of
# starting another. The coordinator address and the operator credentials come from the
# environment: COHORT_COORDINATOR, COHORT_CA, COHORT_ADMIN_TOKEN_FILE (see the compose file).
set -eu

NAME=${COHORT_DEMO_RUN_NAME:-compose-demo}
COORDINATOR=${COHORT_COORDINATOR:-coordinator:50051}
cohort() { command cohort --log-format json "$@"; }
field() { python -c "import json, sys; print(json.load(sys.stdin)$1)"; }

run_id=$(cohort admin runs list --coordinator "$COORDINATOR" --json \
    | python -c "import json, sys; print(next((r['run_id'] for r in json.load(sys.stdin) if r['name'] == sys.argv[1]), ''))" "$NAME")
if [ -n "$run_id" ]; then
    echo "run $run_id ($NAME) exists already: following it" >&2
else
    run_id=$(cohort admin runs start --coordinator "$COORDINATOR" --name "$NAME" "$@" --json \
        | field "['run_id']")
    echo "started run $run_id ($NAME)" >&2
fi

# One JSON line per change of the run (round opened, update accepted, round closed…).
cohort admin runs watch "$run_id" --coordinator "$COORDINATOR" --json
cohort admin runs show "$run_id" --coordinator "$COORDINATOR" >&2
state=$(cohort admin runs show "$run_id" --coordinator "$COORDINATOR" --json | field "['state']")
echo "run $run_id ended: $state" >&2
[ "$state" = completed ]
