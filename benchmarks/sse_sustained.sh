#!/bin/sh
# Event streams sustained (docs/benchmarks.md): 10,000 clients, one writer at 5 changes/s
# for 60 s; talkserver streams, the Node peer's streams, talkserver long polls.
# Run from the checkout: sh benchmarks/sse_sustained.sh
# CLIENTS and DURATION (default 10000 and 60) make a brief check possible:
#   CLIENTS=50 DURATION=2 sh benchmarks/sse_sustained.sh
CLIENTS=${CLIENTS:-10000}
DURATION=${DURATION:-60}
mkdir -p bench
for who in talkserver-sse node-sse talkserver-poll; do
  case $who in
    talkserver-*) .venv/bin/talkserver --port=18610 --db=:memory: 2>/dev/null & P=$!; PORT=18610 ;;
    node-*) node benchmarks/peers/node/server.js 18611 & P=$!; PORT=18611 ;;
  esac
  case $who in *-sse) T=sse ;; *) T=poll ;; esac
  sleep 2
  .venv/bin/talkserver-load --url http://127.0.0.1:$PORT --transport $T --clients $CLIENTS --writers 1 \
      --duration $DURATION --rate 5 --drain 30 --pid $P --json bench/sustained-$who.json > bench/sustained-$who.txt
  kill $P; wait $P
done
