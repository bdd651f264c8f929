#!/usr/bin/env bash
# A three-organisation deployment on one machine, end to end: prepare (setup.sh), start three owners' nodes
# and the coordinator, wait until each answers its health check, run a query as the buyer, verify the receipt
# at the exchange, show each daemon's status, and stop them all with SIGTERM (they drain).
#
#   examples/deployment/run.sh WORK
set -euo pipefail

WORK=${1:?usage: run.sh WORK}
HERE=$(cd "$(dirname "$0")" && pwd)
FT=${FEDTRUST:-fedtrust}
BASE=${FEDTRUST_EXAMPLE_PORT:-17100}
OWNERS=(bank-a bank-b insurer-c)

"$HERE/setup.sh" "$WORK"
WORK=$(cd "$WORK" && pwd)
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT

wait_serving() {  # wait_serving node|coordinator CONFIG
  for _ in $(seq 1 100); do
    if $FT "$1" status --config "$2" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "run.sh: the $1 of $2 did not become healthy; see its log" >&2
  return 1
}

echo "== start the owners' nodes and the coordinator (logs in each directory)"
for o in "${OWNERS[@]}"; do
  d="$WORK/owners/$o"
  (cd "$d" && FEDTRUST_LOG=info exec $FT node serve --config node.toml >"$d/node.log" 2>&1) &
  PIDS+=($!)
done
(cd "$WORK/coordinator" && FEDTRUST_LOG=info exec $FT coordinator serve --config coordinator.toml \
  >"$WORK/coordinator/coordinator.log" 2>&1) &
PIDS+=($!)
for o in "${OWNERS[@]}"; do wait_serving node "$WORK/owners/$o/node.toml"; done
wait_serving coordinator "$WORK/coordinator/coordinator.toml"

echo "== the buyer queries all three owners' rows"
$FT query --credentials "$WORK/buyer/keys" --contract "$WORK/buyer/contract.json" \
  --coordinator "127.0.0.1:$(( BASE + 9 ))" --out "$WORK/buyer/result.json" --receipt "$WORK/buyer/receipt.json" \
  "SELECT region, COUNT(*) AS n, AVG(income) AS mean_income FROM loans GROUP BY region"

echo "== the exchange verifies the receipt"
$FT exchange verify "$WORK/exchange/state" "$WORK/buyer/receipt.json" --result "$WORK/buyer/result.json"

echo "== each daemon's health and figures"
for o in "${OWNERS[@]}"; do $FT node status --config "$WORK/owners/$o/node.toml"; done
$FT coordinator status --config "$WORK/coordinator/coordinator.toml"

echo "== stop (SIGTERM drains)"
stop_all
trap - EXIT
grep -h "stopped" "$WORK"/owners/*/node.log "$WORK/coordinator/coordinator.log" || true
echo "done"
