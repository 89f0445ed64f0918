"""Following the board: everything between a change and the clients waiting for it.

The board hub (board.py) applies a write to the store and wakes the
followers; the feed (feed.py) encodes each answer once; waiters.py and
slowlane.py hold parked polls; wakeup.py writes the shared bytes;
lifecycle.py holds the steps every transport takes (admit, park, release,
the drain's lanes); transport.py says what a transport provides and
transports.py registers them: longpolls.py (with its front door,
fastpolls.py), conditional.py, streams.py and websockets.py.
"""
