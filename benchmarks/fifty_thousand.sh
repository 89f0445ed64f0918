#!/bin/sh
# One change at a time to 50,000 waiting long polls on one small machine:
# talkserver --processes=N on PostgreSQL (each process stays under the
# open-files limit), talkserver-load --workers 4 spreading the clients over
# loopback addresses.  Prints the load tester's summary and the server's
# memory per waiting poll: the peak of all its processes' RSS while the
# polls wait, less their RSS before any client came, over the clients.
#
#     sh benchmarks/fifty_thousand.sh            (PROCESSES=4 CLIENTS=50000)
#     CLIENTS=400 PROCESSES=2 sh benchmarks/fifty_thousand.sh   (a brief check)
set -e
CLIENTS=${CLIENTS:-50000}
PROCESSES=${PROCESSES:-4}
WORKERS=${WORKERS:-4}
DURATION=${DURATION:-20}
PORT=${PORT:-18560}
mkdir -p bench
. benchmarks/cluster.sh
start_cluster
DB=$CLUSTER_URL
.venv/bin/talkserver --port=$PORT --db=$DB --processes=$PROCESSES --max-polls-per-ip=1000 --logging=warning &
SERVER=$!
sleep 5
rss() {  # KiB of the server and its workers
  total=0
  for pid in $SERVER $(ps -o pid= --ppid $SERVER); do
    kib=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status 2>/dev/null)
    total=$((total + ${kib:-0}))
  done
  echo $total
}
BEFORE=$(rss)
PEAK_FILE=$(mktemp); echo 0 > $PEAK_FILE
( while kill -0 $SERVER 2>/dev/null; do now=$(rss); [ $now -gt $(cat $PEAK_FILE) ] && echo $now > $PEAK_FILE; sleep 1; done ) &
WATCH=$!
.venv/bin/talkserver-load --url http://127.0.0.1:$PORT --clients $CLIENTS --workers $WORKERS --writers 1 \
    --spaced 1 --duration $DURATION --drain 30 --json bench/fifty-$CLIENTS.json --plot bench/fifty-$CLIENTS.png \
    > bench/fifty-$CLIENTS.txt 2>&1 || true
PEAK=$(cat $PEAK_FILE)
kill $WATCH 2>/dev/null || true
kill $SERVER; wait $SERVER 2>/dev/null || true
stop_cluster
rm -f $PEAK_FILE
cat bench/fifty-$CLIENTS.txt
echo "server RSS before clients: $BEFORE KiB; peak while they waited: $PEAK KiB"
echo "memory per waiting poll: $(awk -v a=$BEFORE -v b=$PEAK -v n=$CLIENTS 'BEGIN {printf "%.2f", (b - a) / n}') KiB"
