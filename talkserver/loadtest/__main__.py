"""``python -m talkserver.loadtest``: the same as ``talkserver-load``."""

from talkserver.loadtest.cli import main

main()
