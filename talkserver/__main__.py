"""``python -m talkserver``: the same as the ``talkserver`` command."""

from .cli import main

main()
