# Sourced by the benchmark scripts that need PostgreSQL (run from a clone's
# root): start_cluster starts a throwaway cluster (talkserver.testing.cluster)
# and sets CLUSTER_URL to its database's URL; stop_cluster removes it.
start_cluster() {
  CLUSTER_URL_FILE=$(mktemp)
  .venv/bin/python -m talkserver.testing.cluster $CLUSTER_URL_FILE & CLUSTER=$!
  while [ ! -s $CLUSTER_URL_FILE ]; do sleep 0.5; done
  CLUSTER_URL=$(cat $CLUSTER_URL_FILE)
}

stop_cluster() {
  kill $CLUSTER 2>/dev/null; wait $CLUSTER 2>/dev/null || true
  rm -f $CLUSTER_URL_FILE
}
