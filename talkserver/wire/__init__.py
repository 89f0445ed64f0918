"""What both HTTP paths (the handlers and the fast path) share below them.

    validation.py       parsing titles, bodies and cursors (BadInput)
    idle.py             --idle-timeout: one timer for connections idle before their headers
    tornado_private.py  every use of Tornado's private state
    tornado_check.py    the start-up check: each of those used over a loopback connection
"""
