#!/bin/sh
# Event-stream fan-out, one round (docs/benchmarks.md): talkserver streams, the Node
# peer's streams, talkserver long polls; 10,000 clients, one change every 0.5 s.
# Run from the checkout: for r in 1 2 3 4; do sh benchmarks/sse_fanout.sh $r; done
r=${1:?round number}
# CLIENTS and DURATION (default 10000 and 20) make a brief check possible:
#   CLIENTS=50 DURATION=2 sh benchmarks/sse_fanout.sh 1
CLIENTS=${CLIENTS:-10000}
DURATION=${DURATION:-20}
# NODE_PEER (default the repository's own) sets another Node reference's server.js.
NODE_PEER=${NODE_PEER:-benchmarks/peers/node/server.js}
mkdir -p bench
for who in talkserver-sse node-sse talkserver-poll; do
  case $who in
    talkserver-*) .venv/bin/talkserver --port=18610 --db=:memory: 2>/dev/null & P=$!; PORT=18610 ;;
    node-*) node "$NODE_PEER" 18611 & P=$!; PORT=18611 ;;
  esac
  case $who in *-sse) T=sse ;; *) T=poll ;; esac
  sleep 2
  .venv/bin/talkserver-load --url http://127.0.0.1:$PORT --transport $T --clients $CLIENTS --writers 1 \
      --duration $DURATION --spaced 0.5 --pid $P --json bench/$who-$r.json > bench/$who-$r.txt
  kill $P; wait $P
done
