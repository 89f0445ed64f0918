"""The commands an operator runs, on top of everything else.

    cli.py        ``talkserver``: parse the options, open the store, serve
    options.py    every option of ``talkserver``, its group in --help and its check
    passwd.py     ``talkserver-passwd``: write a password file
    importer.py   ``talkserver-import``: copy an SQLite board into PostgreSQL

Nothing else in the package imports from here.
"""
