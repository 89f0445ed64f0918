"""talkserver-load --transport sse: event-stream clients, counted by the same tally as polls."""

import sys

from .harness import load_json, load_server as talkserver, running


def test_a_clean_stream_run_delivers_every_change_to_every_client_exactly_once(tmp_path):
    with talkserver() as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--transport", "sse", "--clients", 300, "--writers", 2, "--duration", 3
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert result["transport"] == "sse"
    assert result["changes"] > 0
    assert result["deliveries"] == result["changes"] * 300
    assert (result["lost"], result["duplicates"], result["errors"], result["reconnects"]) == (0, 0, 0, 0)
    assert result["copies_matching"] == result["copies_checked"] == 300
    assert "300 (event streams)" in done.stdout


def test_streams_from_the_talkserver_command_with_its_limits_run_clean(tmp_path):
    with running(sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:") as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--transport", "sse", "--clients", 500, "--writers", 1, "--duration", 2
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert result["deliveries"] == result["changes"] * 500
    assert result["lost"] == 0


def test_a_server_whose_events_miss_deletions_is_caught(tmp_path):
    with talkserver("drop") as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--transport", "sse", "--clients", 20, "--duration", 2, "--rate", 8, "--drain", 1
        )

    assert done.returncode == 1
    assert result["lost"] > 0
    assert "NOT CLEAN" in done.stdout
