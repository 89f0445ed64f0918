"""The HTTP API: every endpoint, answer and client error of docs/protocol.md."""

import asyncio
import json
from urllib.parse import quote

import pytest


@pytest.fixture(autouse=True)
def store(each_store):
    """Every test here runs on each kind of store."""
    return each_store


async def fetch(http_client, base_url, path, method="GET", body=None, headers=None):
    """The response, whatever its status (no exception for 4xx)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return await http_client.fetch(
        base_url + path,
        method=method,
        body=body,
        headers=headers,
        raise_error=False,
        allow_nonstandard_methods=True,
    )


def talk_path(title):
    return "/talks/" + quote(title, safe="")


def error_of(response):
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)["error"]


async def put_talk(http_client, base_url, title, presenter="Ann", summary="About it"):
    response = await fetch(
        http_client, base_url, talk_path(title), "PUT", {"presenter": presenter, "summary": summary}
    )
    assert response.code == 204, response.body
    return response


@pytest.mark.gen_test(timeout=120)
async def test_an_empty_board_lists_no_talks(http_client, base_url, store):
    response = await fetch(http_client, base_url, "/talks")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.body) == {"serverTime": store.head, "talks": []}


@pytest.mark.gen_test(timeout=120)
async def test_a_proposed_talk_can_be_read_back(http_client, base_url):
    await put_talk(http_client, base_url, "Unicycling", "Ann", "Riding one wheel")
    talk = {"title": "Unicycling", "presenter": "Ann", "summary": "Riding one wheel", "comments": []}

    one = await fetch(http_client, base_url, "/talks/Unicycling")
    assert one.code == 200 and json.loads(one.body) == talk

    listed = json.loads((await fetch(http_client, base_url, "/talks")).body)
    assert listed["talks"] == [talk]


@pytest.mark.gen_test(timeout=120)
async def test_server_time_is_an_integer_that_grows_with_each_change(http_client, base_url):
    before = json.loads((await fetch(http_client, base_url, "/talks")).body)["serverTime"]
    await put_talk(http_client, base_url, "a")
    after = json.loads((await fetch(http_client, base_url, "/talks")).body)["serverTime"]
    assert isinstance(before, int) and isinstance(after, int)
    assert after > before


@pytest.mark.gen_test(timeout=120)
async def test_putting_a_talk_again_replaces_it_and_drops_its_comments(http_client, base_url, store):
    await put_talk(http_client, base_url, "a", "Ann", "old")
    comment = await fetch(http_client, base_url, "/talks/a/comments", "POST", {"author": "Bo", "message": "hi"})
    # The comment was there to drop.
    assert comment.code == 204 and store.get("a")["comments"] == [{"author": "Bo", "message": "hi"}]
    await put_talk(http_client, base_url, "a", "Cy", "new")
    talk = json.loads((await fetch(http_client, base_url, "/talks/a")).body)
    assert talk == {"title": "a", "presenter": "Cy", "summary": "new", "comments": []}


@pytest.mark.gen_test(timeout=120)
async def test_comments_are_added_in_order(http_client, base_url):
    await put_talk(http_client, base_url, "a")
    for author, message in [("Bo", "first"), ("Cy", "second")]:
        response = await fetch(
            http_client, base_url, "/talks/a/comments", "POST", {"author": author, "message": message}
        )
        assert response.code == 204
    talk = json.loads((await fetch(http_client, base_url, "/talks/a")).body)
    assert talk["comments"] == [
        {"author": "Bo", "message": "first"},
        {"author": "Cy", "message": "second"},
    ]


@pytest.mark.gen_test(timeout=120)
async def test_commenting_on_a_missing_talk_is_404(http_client, base_url, store):
    head = store.head
    response = await fetch(http_client, base_url, "/talks/ghost/comments", "POST", {"author": "a", "message": "m"})
    assert response.code == 404
    assert "ghost" in error_of(response)
    assert store.head == head


@pytest.mark.gen_test(timeout=120)
async def test_reading_a_missing_talk_is_404_with_a_message(http_client, base_url):
    response = await fetch(http_client, base_url, "/talks/ghost")
    assert response.code == 404
    assert "ghost" in error_of(response)


@pytest.mark.gen_test(timeout=120)
async def test_delete_removes_the_talk_and_is_204_even_when_missing(http_client, base_url):
    await put_talk(http_client, base_url, "a")
    assert (await fetch(http_client, base_url, "/talks/a", "DELETE")).code == 204
    assert (await fetch(http_client, base_url, "/talks/a")).code == 404
    assert (await fetch(http_client, base_url, "/talks/a", "DELETE")).code == 204
    assert json.loads((await fetch(http_client, base_url, "/talks")).body)["talks"] == []


@pytest.mark.parametrize(
    "title",
    ["with space", "slash/inside", "100% & more", "Ünïcödé ✓ 日本語", "emoji 🎤🚲", "?query#hash", "+plus+"],
)
@pytest.mark.gen_test(timeout=120)
async def test_titles_are_any_unicode_in_one_encoded_path_segment(http_client, base_url, title):
    await put_talk(http_client, base_url, title)
    one = await fetch(http_client, base_url, talk_path(title))
    assert json.loads(one.body)["title"] == title
    comment = await fetch(
        http_client, base_url, talk_path(title) + "/comments", "POST", {"author": "a", "message": "m"}
    )
    assert comment.code == 204
    listed = json.loads((await fetch(http_client, base_url, "/talks")).body)["talks"]
    assert [t["title"] for t in listed] == [title]
    assert (await fetch(http_client, base_url, talk_path(title), "DELETE")).code == 204
    assert (await fetch(http_client, base_url, talk_path(title))).code == 404


BAD_TALK_BODIES = [
    ("not json", b"{presenter: 'x'", "not valid JSON"),
    ("not an object", b'["Ann", "x"]', "JSON object"),
    ("a string", b'"hello"', "JSON object"),
    ("missing presenter", b'{"summary": "x"}', '"presenter" is missing'),
    ("missing summary", b'{"presenter": "x"}', '"summary" is missing'),
    ("number presenter", b'{"presenter": 5, "summary": "x"}', '"presenter" must be a string'),
    ("null summary", b'{"presenter": "x", "summary": null}', '"summary" must be a string'),
    ("lone surrogate", b'{"presenter": "\\ud800", "summary": "x"}', "invalid Unicode"),
    ("invalid utf-8", b'{"presenter": "\xff\xfe", "summary": "x"}', "not valid UTF-8"),
    ("control character", b'{"presenter": "a\\u0000b", "summary": "x"}', "control characters"),
    ("too long summary", json.dumps({"presenter": "x", "summary": "s" * 5001}).encode(), "longer than 5000"),
    ("too long presenter", json.dumps({"presenter": "p" * 101, "summary": "x"}).encode(), "longer than 100"),
    ("empty body", b"", "not valid JSON"),
]


@pytest.mark.parametrize("name,body,message", BAD_TALK_BODIES, ids=[b[0] for b in BAD_TALK_BODIES])
@pytest.mark.gen_test(timeout=120)
async def test_a_bad_talk_body_is_400_with_a_message_and_stores_nothing(
    http_client, base_url, store, name, body, message
):
    head = store.head
    response = await fetch(http_client, base_url, "/talks/a", "PUT", body)
    assert response.code == 400
    assert message in error_of(response)
    assert store.head == head and store.get("a") is None


@pytest.mark.parametrize(
    "body,message",
    [
        (b'{"author": "a"}', '"message" is missing'),
        (b'{"author": ["a"], "message": "m"}', '"author" must be a string'),
        (json.dumps({"author": "a", "message": "m" * 2001}).encode(), "longer than 2000"),
        (b"null", "JSON object"),
    ],
)
@pytest.mark.gen_test(timeout=120)
async def test_a_bad_comment_is_400_and_the_talk_is_unchanged(http_client, base_url, store, body, message):
    await put_talk(http_client, base_url, "a")
    head = store.head
    response = await fetch(http_client, base_url, "/talks/a/comments", "POST", body)
    assert response.code == 400
    assert message in error_of(response)
    assert store.head == head and store.get("a")["comments"] == []


@pytest.mark.gen_test(timeout=120)
async def test_a_title_that_is_too_long_or_has_control_characters_is_400(http_client, base_url, store):
    for title in ["t" * 201, "line\nbreak", "tab\there", ".", ".."]:
        response = await fetch(http_client, base_url, talk_path(title), "PUT", {"presenter": "p", "summary": "s"})
        assert response.code == 400, title
        assert "title" in error_of(response)
    assert store.all_talks() == []


@pytest.mark.gen_test(timeout=120)
async def test_a_title_that_is_not_utf8_is_400(http_client, base_url, store):
    response = await fetch(http_client, base_url, "/talks/%FF%FE", "PUT", {"presenter": "p", "summary": "s"})
    assert response.code == 400
    assert store.all_talks() == []


@pytest.mark.gen_test(timeout=120)
async def test_a_body_over_the_limit_is_413_and_stores_nothing(http_client, base_url, store, app):
    limit = app.settings["max_body_size"]
    body = json.dumps({"presenter": "p", "summary": "x" * limit})
    response = await fetch(http_client, base_url, "/talks/big", "PUT", body)
    assert response.code == 413
    assert str(limit) in error_of(response)
    assert store.get("big") is None


@pytest.mark.gen_test(timeout=120)
async def test_a_chunked_body_crossing_the_limit_is_413(http_server, http_port, store, app):
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(b"PUT /talks/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 16384
    try:
        for _ in range(app.settings["max_body_size"] // len(chunk) + 2):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
    except ConnectionError:
        pass  # the server may close before the last chunks are sent
    status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 413")
    writer.close()
    assert store.get("big") is None


@pytest.mark.parametrize(
    "method,path",
    [("POST", "/talks"), ("DELETE", "/talks"), ("POST", "/talks/a"), ("GET", "/talks/a/comments"),
     ("PUT", "/talks/a/comments"), ("PATCH", "/talks/a"), ("POST", "/metrics")],
)
@pytest.mark.gen_test(timeout=120)
async def test_a_wrong_method_on_a_known_path_is_405(http_client, base_url, store, method, path):
    head = store.head
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    response = await fetch(http_client, base_url, path, method, body)
    assert response.code == 405
    assert store.head == head


@pytest.mark.parametrize("path", ["/nothing-here", "/talks/a/b", "/talks/a/comments/1", "/talks/"])
@pytest.mark.gen_test(timeout=120)
async def test_an_unknown_path_is_404(http_client, base_url, path):
    assert (await fetch(http_client, base_url, path)).code == 404


@pytest.mark.gen_test(timeout=120)
async def test_a_write_from_another_origin_is_403_and_changes_nothing(http_client, base_url, store):
    await put_talk(http_client, base_url, "a")
    head = store.head
    evil = {"Origin": "http://evil.example"}
    attempts = [
        ("/talks/a", "PUT", {"presenter": "x", "summary": "y"}),
        ("/talks/a", "DELETE", None),
        ("/talks/a/comments", "POST", {"author": "x", "message": "y"}),
    ]
    for path, method, body in attempts:
        response = await fetch(http_client, base_url, path, method, body, headers=evil)
        assert response.code == 403
        assert "evil.example" in error_of(response)
    assert store.head == head
    assert store.get("a")["presenter"] == "Ann"


@pytest.mark.gen_test(timeout=120)
async def test_a_null_origin_is_refused_too(http_client, base_url, store):
    response = await fetch(
        http_client, base_url, "/talks/a", "PUT", {"presenter": "x", "summary": "y"}, headers={"Origin": "null"}
    )
    assert response.code == 403
    assert store.get("a") is None


@pytest.mark.gen_test(timeout=120)
async def test_a_same_origin_text_plain_write_works_as_the_books_client_sends_it(http_client, base_url, store):
    host = base_url.split("://", 1)[1]
    headers = {"Origin": base_url, "Content-Type": "text/plain;charset=UTF-8", "Host": host}
    response = await fetch(
        http_client, base_url, "/talks/Book", "PUT", {"presenter": "Marijn", "summary": "Skills"}, headers=headers
    )
    assert response.code == 204
    assert store.get("Book")["presenter"] == "Marijn"


@pytest.mark.gen_test(timeout=120)
async def test_an_origin_matches_with_or_without_its_default_port(http_client, base_url, store):
    headers = {"Host": "talks.example:80", "Origin": "http://talks.example"}
    response = await fetch(http_client, base_url, "/talks/a", "PUT", {"presenter": "x", "summary": "y"}, headers=headers)
    assert response.code == 204
    headers = {"Host": "talks.example:8080", "Origin": "http://talks.example"}
    response = await fetch(http_client, base_url, "/talks/b", "PUT", {"presenter": "x", "summary": "y"}, headers=headers)
    assert response.code == 403
    assert store.get("b") is None


@pytest.mark.gen_test(timeout=120)
async def test_reads_from_another_origin_are_allowed(http_client, base_url):
    response = await fetch(http_client, base_url, "/talks", headers={"Origin": "http://elsewhere.example"})
    assert response.code == 200


@pytest.mark.gen_test(timeout=120)
async def test_the_page_is_served_at_the_root_with_revalidation(http_client, base_url):
    response = await fetch(http_client, base_url, "/")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert b"<html" in response.body.lower()
    assert response.headers["Cache-Control"] == "no-cache"
    etag = response.headers["Etag"]
    again = await fetch(http_client, base_url, "/", headers={"If-None-Match": etag})
    assert again.code == 304 and again.body == b""


@pytest.mark.parametrize("path", ["/../setup.cfg", "/%2e%2e/setup.cfg", "/..%2fsetup.cfg", "/www/../../setup.cfg"])
@pytest.mark.gen_test(timeout=120)
async def test_no_path_traversal_out_of_the_static_directory(http_client, base_url, path):
    response = await fetch(http_client, base_url, path)
    assert response.code in (403, 404)
    assert b"[metadata]" not in response.body


@pytest.mark.gen_test(timeout=120)
async def test_metrics_are_in_prometheus_text_format(http_client, base_url):
    await put_talk(http_client, base_url, "a")
    await put_talk(http_client, base_url, "b")
    await fetch(http_client, base_url, "/talks/b", "DELETE")
    await fetch(http_client, base_url, "/talks?changesSince=nope")
    response = await fetch(http_client, base_url, "/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    lines = response.body.decode().splitlines()
    assert "# TYPE talkserver_waiting_clients gauge" in lines
    assert "talkserver_waiting_clients 0.0" in lines
    assert "talkserver_talks 1.0" in lines
    assert "# TYPE talkserver_changes_total counter" in lines
    assert "talkserver_changes_total 3.0" in lines
    assert '# TYPE talkserver_requests_total counter' in lines
    assert 'talkserver_requests_total{code="204"} 3.0' in lines
    assert 'talkserver_requests_total{code="400"} 1.0' in lines


@pytest.mark.gen_test(timeout=120)
async def test_error_answers_never_leak_a_500(http_client, base_url):
    """A grab bag of odd requests; each must be a 4xx."""
    odd = [
        ("/talks?changesSince=", "GET", None),
        ("/talks?changesSince=1e3", "GET", None),
        ("/talks?changesSince=99999999999999999999999", "GET", None),
        ("/talks/%00", "PUT", {"presenter": "p", "summary": "s"}),
        ("/talks/a", "PUT", b"\x00\x01\x02"),
        ("/talks/a", "PUT", b'{"presenter": "p", "summary": "s", "presenter": 1}'),
        ("/talks/a/comments", "POST", b"[]"),
        ("/talks/%E2%82", "GET", None),
    ]
    for path, method, body in odd:
        response = await fetch(http_client, base_url, path, method, body)
        assert 400 <= response.code < 500, (path, response.code)


@pytest.mark.gen_test(timeout=120)
async def test_healthz_is_ok_while_the_store_answers(http_client, base_url):
    response = await fetch(http_client, base_url, "/healthz")
    assert response.code == 200
    assert json.loads(response.body)["ok"] is True
