"""Tools the tests and the benchmarks share; nothing in the server imports them.

    cluster.py   a throwaway PostgreSQL cluster, and fresh databases in it
    servers.py   ``python -m talkserver`` in a subprocess, on the port it bound
    rawhttp.py   one request over a raw socket, and answers taken apart

They live in the package, as ``tornado.testing`` does in Tornado's, so
that tests/ (through tests/harness.py) and benchmarks/ reach them the same
way, with neither importing the other nor editing ``sys.path``.
"""

# The one overall timeout for something expected to happen (a server to
# start, an answer to come).  Generous: the tests and benchmarks must run
# on a machine whose cores other processes keep busy.
WAIT = 60.0
