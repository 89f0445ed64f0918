"""Following the board: everything between a change and the clients waiting for it.

The board hub (board.py) applies a write to the store and wakes the
followers; the feed (feed.py) encodes each answer once; waiters.py and
slowlane.py hold parked polls; wakeup.py writes the shared bytes;
lifecycle.py holds the steps every transport takes (which transport,
admit, park, release); and each transport (fastpolls.py for plain long
polls, conditional.py for ETag polls, streams.py for event streams, the
handlers' long poll in talkserver.web.handlers) is a module of its own.
"""
