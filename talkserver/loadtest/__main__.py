"""``python -m talkserver.loadtest``: the same as ``talkserver-load``."""

from .cli import main

main()
