"""Metrics across workers: each writes its values, a scrape adds them up."""

from talkserver.metrics import Metrics


def worker(directory, number, waiting, talks, requests):
    metrics = Metrics()
    metrics.gauge("talkserver_waiting_clients", "polls", lambda: waiting)
    metrics.gauge("talkserver_talks", "talks", lambda: talks, merge="max")
    counter = metrics.counter("talkserver_requests_total", "requests", label="code")
    for code, count in requests.items():
        counter.inc(code, count)
    metrics.share_with(str(directory), number)
    metrics.publish()
    return metrics


def test_a_scrape_of_one_worker_describes_every_worker(tmp_path):
    worker(tmp_path, 0, waiting=30, talks=5, requests={"200": 7})
    scraped = worker(tmp_path, 1, waiting=12, talks=4, requests={"200": 1, "204": 2})

    lines = scraped.render().splitlines()

    assert "talkserver_waiting_clients 42" in lines
    assert "talkserver_talks 5" in lines
    assert 'talkserver_requests_total{code="200"} 8' in lines
    assert 'talkserver_requests_total{code="204"} 2' in lines


def test_a_restarted_worker_replaces_its_own_file(tmp_path):
    worker(tmp_path, 0, waiting=30, talks=5, requests={})
    worker(tmp_path, 0, waiting=3, talks=5, requests={})  # the same worker, restarted
    scraped = worker(tmp_path, 1, waiting=1, talks=5, requests={})
    assert "talkserver_waiting_clients 4" in scraped.render().splitlines()


def test_without_sharing_the_registry_renders_its_own_values():
    metrics = Metrics()
    metrics.gauge("talkserver_waiting_clients", "polls", lambda: 3)
    assert "talkserver_waiting_clients 3" in metrics.render().splitlines()
