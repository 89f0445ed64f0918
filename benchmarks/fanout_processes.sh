#!/bin/sh
# Fan-out to 10,000 clients at a fixed interval (one change a second):
# talkserver as one process, as --processes=2 (both on PostgreSQL), and the
# Node peer, taking turns, ROUNDS rounds.  Writes bench/scale-*.json|txt.
#
#     sh benchmarks/fanout_processes.sh 1
#
# The PostgreSQL cluster is a throwaway one with its durability defaults
# (talkserver.testing.cluster); the load client shares the machine's cores.
set -e
ROUNDS=${1:-1}
CLIENTS=${CLIENTS:-10000}
DURATION=${DURATION:-15}  # CLIENTS=50 DURATION=2 sh benchmarks/fanout_processes.sh 1: a brief check
mkdir -p bench
. benchmarks/cluster.sh
start_cluster
BASE=$CLUSTER_URL
newdb() { name=b$(date +%s%N); psql -q -X "$BASE" -c "CREATE DATABASE $name" >/dev/null; echo "${BASE%/*}/$name"; }
for r in $(seq 1 $ROUNDS); do
  for who in one two node; do
    case $who in
      one)  .venv/bin/talkserver --port=18520 --db=$(newdb) --logging=warning & P=$!; PORT=18520 ;;
      two)  .venv/bin/talkserver --port=18521 --db=$(newdb) --processes=2 --logging=warning & P=$!; PORT=18521 ;;
      node) node benchmarks/peers/node/server.js 18522 & P=$!; PORT=18522 ;;
    esac
    sleep 3
    PIDOPT=""; [ $who != two ] && PIDOPT="--pid $P"
    .venv/bin/talkserver-load --url http://127.0.0.1:$PORT --clients $CLIENTS --writers 1 \
        --duration $DURATION --rate 1 --drain 10 $PIDOPT --json bench/scale-$who-$r.json > bench/scale-$who-$r.txt 2>&1 || true
    # The server's CPU seconds for the whole run (connecting included), its workers too.
    cpu=0; for pid in $P $(ps -o pid= --ppid $P); do
      cpu=$(awk -v c=$cpu '{print c + ($14 + $15) / 100}' /proc/$pid/stat); done
    echo "$cpu" > bench/scale-$who-$r.cpu
    kill $P; wait $P || true
  done
done
stop_cluster
