"""Who may do what: the checks a request passes before it is served.

    guard.py      Host, the request target and header sizes, before routing
    auth.py       the password, and talk ownership with --protect-talks
    passwords.py  scrypt checks in a small thread pool, guesses slowed
    limits.py     per-address poll cap and lanes, write rate, comments per talk
"""
