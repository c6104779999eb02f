"""The server fuzz (tests/fuzz/requests.py): 500 random and mutated KServe v2 requests over loopback, each answered
below 500 with a JSON error where it is refused, the server live after each; `make fuzz-serve` runs 20,000."""

from __future__ import annotations

from tests.fuzz.requests import case, fuzz
from tests.serve.helpers import running


def test_five_hundred_fuzzed_requests_get_no_5xx_and_the_server_lives(built):
    with running([built[1]]) as server:
        result = fuzz(server.port, range(500), say=lambda _line: None)
    assert result["findings"] == [], result["findings"][:5]
    statuses = result["statuses"]
    assert statuses.get("200", 0) > 20 and statuses.get("400", 0) > 200  # the cases reach both ends
    assert len(statuses) >= 5, statuses


def test_cases_are_reproducible_from_their_number():
    assert case(17) == case(17) and case(17) != case(18)
