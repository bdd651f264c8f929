#!/usr/bin/env bash
# Prepare a three-organisation fedtrust deployment in WORK: an exchange, three data owners (bank-a, bank-b,
# insurer-c), a coordinator and a buyer, each in its own directory with its own keys and config — the steps
# each organisation runs on its own machine, here on one.
#
#   examples/deployment/setup.sh WORK [--compose]
#
# Plain: every daemon listens on 127.0.0.1 (ports from FEDTRUST_EXAMPLE_PORT, default 17100).
# --compose: addresses are the compose service names (node-a:7101, …), for docker/compose.yaml.
# FEDTRUST names the command (default: fedtrust).
set -euo pipefail

WORK=${1:?usage: setup.sh WORK [--compose]}
MODE=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
FT=${FEDTRUST:-fedtrust}
BASE=${FEDTRUST_EXAMPLE_PORT:-17100}
OWNERS=(bank-a bank-b insurer-c)

if [ -e "$WORK" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
  echo "setup.sh: $WORK is not empty; choose a new directory" >&2
  exit 1
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

address() {  # address <index 0..2 for owners, 9 for the coordinator>
  if [ "$MODE" = "--compose" ]; then
    if [ "$1" = 9 ]; then echo "coordinator:7000"; else echo "node-$1:$((7101 + $1))"; fi
  else
    if [ "$1" = 9 ]; then echo "127.0.0.1:$((BASE + 9))"; else echo "127.0.0.1:$((BASE + 1 + $1))"; fi
  fi
}
listen() {  # where a daemon binds: all interfaces in a container, loopback on one machine
  if [ "$MODE" = "--compose" ]; then echo "0.0.0.0:${1##*:}"; else echo "$1"; fi
}

echo "== exchange: a CA, a signing key and a registry"
$FT exchange init "$WORK/exchange/state" >/dev/null

echo "== every party makes its own keys; the exchange certifies its signed request"
enroll() {  # enroll ROLE NAME DIR [ADDRESS]
  local role=$1 name=$2 dir=$3 addr=${4:-}
  $FT keygen --role "$role" --name "$name" ${addr:+--address "$addr"} --out "$dir/keys" >/dev/null
  $FT exchange register "$WORK/exchange/state" --request "$dir/keys/request.json" --out "$dir/keys" >/dev/null
}
enroll buyer analyst "$WORK/buyer"
enroll coordinator coord "$WORK/coordinator" "$(address 9)"

for i in 0 1 2; do
  o=${OWNERS[$i]}
  d="$WORK/owners/$o"
  enroll node "$o" "$d" "$(address $i)"
  mkdir -p "$d/data"
  cp "$HERE/data/$o.csv" "$d/data/loans.csv"
  commitment=$($FT node digest "$d/data/loans.csv")
  $FT exchange list "$WORK/exchange/state" --owner "$o" --dataset loans --schema "$HERE/schema.toml" \
    --commitment "$commitment" --min-rows 200 --out "$d/product.json" >/dev/null
  metrics=$(( BASE + 51 + i ))
  cat > "$d/node.toml" <<TOML
[node]
name = "$o"
listen = "$(listen "$(address $i)")"
credentials = "keys"
state = "state/ledger"
metrics_listen = "$( [ "$MODE" = "--compose" ] && echo "0.0.0.0:9100" || echo "127.0.0.1:$metrics" )"
drain_s = 20

[[datasets]]
product = "product.json"
path = "data/loans.csv"
TOML
done

cat > "$WORK/coordinator/coordinator.toml" <<TOML
[coordinator]
name = "coord"
listen = "$(listen "$(address 9)")"
credentials = "keys"
state = "state"
node_timeout_s = 120
metrics_listen = "$( [ "$MODE" = "--compose" ] && echo "0.0.0.0:9100" || echo "127.0.0.1:$(( BASE + 59 ))" )"
TOML

echo "== the exchange issues the contract; the buyer and every owner sign it"
$FT exchange contract "$WORK/exchange/state" --buyer analyst --coordinator coord \
  --product "$WORK/owners/bank-a/product.json" --product "$WORK/owners/bank-b/product.json" \
  --product "$WORK/owners/insurer-c/product.json" --rules "$HERE/rules.toml" \
  --purpose "regional credit-risk statistics" --out "$WORK/buyer/contract.json" >/dev/null
$FT contract sign "$WORK/buyer/contract.json" --credentials "$WORK/buyer/keys" >/dev/null
for o in "${OWNERS[@]}"; do
  $FT contract sign "$WORK/buyer/contract.json" --credentials "$WORK/owners/$o/keys" >/dev/null
done

for o in "${OWNERS[@]}"; do
  $FT node check --config "$WORK/owners/$o/node.toml" >/dev/null
done
echo "prepared $WORK (exchange/, owners/{bank-a,bank-b,insurer-c}/, coordinator/, buyer/)"
