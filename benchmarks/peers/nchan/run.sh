#!/bin/sh
# nchan (benchmarks/peers/nchan/nginx.conf) with everything it writes in DIR:
# its configuration, pid file, error log and temporary files.  It runs in the
# foreground (the master's pid is this script's, through exec) until SIGTERM
# or SIGQUIT; no root needed.
#
#     sh benchmarks/peers/nchan/run.sh DIR [PORT]     (default 8400, on 127.0.0.1)
#
# NGINX names the nginx binary (default: nginx on PATH, else /usr/sbin/nginx).
set -e
DIR=${1:?usage: run.sh DIR [PORT]}
PORT=${2:-8400}
case $PORT in *[!0-9]*|'') echo "run.sh: the port must be a number, not '$PORT'" >&2; exit 2 ;; esac
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
if [ ! -x "$NGINX" ]; then
  echo "run.sh: nginx is missing: 'make nchan' installs Debian's nginx and libnginx-mod-nchan (as root)" >&2
  exit 2
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
# Never more connections than this process may open files (less a few for
# the log and the listening socket): nginx would refuse the rest with errors.
FILES=$(ulimit -n)
CONNECTIONS=65536
case $FILES in unlimited) ;; *) [ "$FILES" -lt 65546 ] && CONNECTIONS=$((FILES - 10)) ;; esac
sed -e "s/^\( *listen 127\.0\.0\.1:\)8400;/\1$PORT;/" \
    -e "s/^\( *worker_connections \)65536;/\1$CONNECTIONS;/" \
    "$(dirname "$0")/nginx.conf" > "$DIR/nginx.conf"
exec "$NGINX" -p "$DIR/" -c "$DIR/nginx.conf" -e "$DIR/error.log"
