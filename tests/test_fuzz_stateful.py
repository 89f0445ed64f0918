"""Random sequences of requests against a running server and a model of the talks.

Hypothesis drives PUTs (valid and not), DELETEs, comments, reads and long
polls; after each step the answer must be the one the model predicts, and a
client following the change feed must end up with the model's talks.
"""

import http.client
import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from .follower import Follower, Servers
from .harness import ServerProcess

MAX_COMMENTS = 3

# A few titles that collide often, plus odd ones: slashes, percent signs,
# dots, emoji, right-to-left text, combining marks.
titles = st.sampled_from(["Ada", "Unix pipes", "a/b", "100% sure?", ".a", "...", "😀", "שלום", "e\u0301"]) | st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12
).filter(lambda t: t not in (".", ".."))
# Titles no browser can put in a URL path (it resolves them as path steps).
path_step_titles = st.sampled_from([".", ".."])
names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12)
# Multi-line text: any character but control ones, except newlines and tabs.
texts = st.text(st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from("\n\t\r"), max_size=40)
bad_bodies = st.sampled_from(
    [
        b"",
        b"{",
        b"[]",
        b'{"presenter": "Ada"}',
        b'{"presenter": 5, "summary": "s"}',
        b'{"presenter": "A\\u0000", "summary": "s"}',
        b'{"presenter": "Ada", "summary": "\\ud800"}',
        b'{"presenter": "' + b"x" * 101 + b'", "summary": "s"}',
        b"\xff\xfe",
    ]
)


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--write-rate=0", f"--max-comments={MAX_COMMENTS}", "--poll-timeout=0.5") as server:
        yield server
        assert server.stop() == 0


class TalkBoard(RuleBasedStateMachine):
    """The server under random requests, next to a dict of what it should hold."""

    port: int

    @initialize()
    def start_from_an_empty_board(self):
        # Every run starts empty, so a failing run can be replayed exactly.
        self.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for talk in self.request("GET", "/talks")[1]["talks"]:
            assert self.request("DELETE", self.path(talk["title"]))[0] == 204
        status, answer = self.request("GET", "/talks")
        assert (status, answer["talks"]) == (200, [])
        self.model = {}
        # A client's copy, kept by the change feed (random writes may repeat a state).
        self.follower = Follower(Servers(f"http://127.0.0.1:{self.port}"), client=None, unique_states=False)
        self.follower.apply(answer)
        self.newest = answer["serverTime"]
        self.changed = False

    def teardown(self):
        if hasattr(self, "http"):
            self.http.close()

    def request(self, method, path, body=None):
        self.http.request(method, path, body=body)
        response = self.http.getresponse()
        raw = response.read()
        if response.status != 204:
            assert response.getheader("Content-Type").startswith("application/json")
        return response.status, json.loads(raw) if raw else None

    @staticmethod
    def path(title):
        return "/talks/" + quote(title, safe="")

    @rule(title=titles, presenter=names, summary=texts)
    def propose(self, title, presenter, summary):
        status, _ = self.request("PUT", self.path(title), json.dumps({"presenter": presenter, "summary": summary}))
        assert status == 204
        self.model[title] = {"title": title, "presenter": presenter, "summary": summary, "comments": []}
        self.changed = True

    @rule(title=titles, body=bad_bodies)
    def propose_badly(self, title, body):
        status, answer = self.request("PUT", self.path(title), body)
        assert status == 400 and answer["error"]

    @rule(title=titles)
    def delete(self, title):
        status, _ = self.request("DELETE", self.path(title))
        assert status == 204
        if self.model.pop(title, None) is not None:
            self.changed = True

    @rule(title=titles, author=names, message=texts)
    def comment(self, title, author, message):
        status, answer = self.request(
            "POST", self.path(title) + "/comments", json.dumps({"author": author, "message": message})
        )
        talk = self.model.get(title)
        if talk is None:
            assert status == 404 and answer["error"]
        elif len(talk["comments"]) >= MAX_COMMENTS:
            assert status == 409 and "already has" in answer["error"]
        else:
            assert status == 204
            talk["comments"] = talk["comments"] + [{"author": author, "message": message}]
            self.changed = True

    @rule(title=path_step_titles, method=st.sampled_from(["GET", "PUT", "DELETE"]))
    def refuse_path_step_titles(self, title, method):
        body = json.dumps({"presenter": "p", "summary": "s"}) if method == "PUT" else None
        status, answer = self.request(method, self.path(title), body)
        assert status == 400 and "title" in answer["error"]

    @rule(title=titles)
    def read_one(self, title):
        status, answer = self.request("GET", self.path(title))
        if title in self.model:
            assert (status, answer) == (200, self.model[title])
        else:
            assert status == 404 and answer["error"]

    @rule()
    def read_all(self):
        status, answer = self.request("GET", "/talks")
        assert status == 200
        assert {t["title"]: t for t in answer["talks"]} == self.model
        assert answer["serverTime"] >= self.newest
        self.newest = answer["serverTime"]

    @precondition(lambda self: self.changed)
    @rule()
    def follow_the_feed(self):
        cursor = self.follower.server_time
        status, answer = self.request("GET", f"/talks?changesSince={cursor}")
        assert status == 200 and answer["talks"], "a change since the cursor must be reported at once"
        assert answer["serverTime"] > cursor
        self.follower.apply(answer)
        self.changed = False
        assert self.follower.problems == []
        assert self.follower.talks == self.model


def test_random_requests_keep_the_server_and_the_model_in_step(server):
    TalkBoard.port = server.port
    run_state_machine_as_test(
        TalkBoard,
        settings=settings(
            max_examples=100, stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
