"""Running the server: processes, stopping, memory, metrics.

    workers.py    --processes: bind_sockets + fork_processes, the stop pipe
    shutdown.py   the drain on SIGTERM
    collector.py  how the garbage collector runs beside thousands of parked polls
    metrics.py    counters and gauges for /metrics (prometheus_client)
    openfiles.py  raising the open-files limit (the load tester uses it too)

openfiles.py imports nothing, so a client can use it without loading the server.
"""
