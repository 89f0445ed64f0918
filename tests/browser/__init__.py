"""Browser tests: the page in real Chromium against a real talkserver."""
