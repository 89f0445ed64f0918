"""``python -m talkserver``: the same as the ``talkserver`` command."""

from talkserver.command.cli import main

main()
