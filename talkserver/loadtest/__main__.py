"""``python -m talkserver.loadtest``: the same as ``talkserver-load``."""

from talkserver.loadtest.cli import main

# Guarded: a --workers process (multiprocessing's spawn) imports this
# module again under another name, and must not start a second run.
if __name__ == "__main__":
    main()
