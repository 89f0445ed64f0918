"""The HTTP edge: the route table, the Application and its handlers.

    app.py        make_app(), the route table and TalkApplication
    handlers.py   parse and check a request, call the board, shape the answer
    accept.py     an HTTPServer whose accepting backs off when out of descriptors
"""
