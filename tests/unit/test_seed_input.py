"""`fleet seed` input (hypothesis): whatever the lines of a seed file hold, seeding never raises; each
line is either enqueued or rejected with one line on stderr and counted; and every entry it enqueues is
one a worker decodes and turns into a Request (the seed side and the worker side agree)."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scraper.cli.seeding import Rejected, seed_entries
from scraper.policy.urls import DEFAULT_SCHEMES, url_lines
from scraper.queue.envelope import Envelope

_LINE = st.one_of(
    st.text(max_size=40),
    st.builds(lambda s, rest: f"{s}://{rest}", st.sampled_from(["http", "https", "HTTPS", "file", "ftp", "data"]),
              st.text(max_size=30)),
    st.builds(lambda host, path: f"http://{host}/{path}",
              st.from_regex(r"[a-zA-Z0-9.\-_:\[\]@% ]{0,16}", fullmatch=True), st.text(max_size=16)),
    st.sampled_from(["http:///nohost", "javascript:alert(1)", "file:///etc/hostname", "http://exa mple.com/",
                     "http://a.test/ok", "# comment", ""]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINE | st.binary(max_size=30).map(lambda b: b.decode("latin-1")), max_size=12),
       raw_tail=st.binary(max_size=40))
def test_seed_input_never_raises_and_what_it_enqueues_a_worker_can_run(
        lines: list[str], raw_tail: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n" + raw_tail
    rejected = Rejected(DEFAULT_SCHEMES)
    urls = list(url_lines(io.BytesIO(data)))
    entries = list(seed_entries(urls, "s", "r1", None, rejected))
    assert len(entries) + rejected.count == len(urls)
    err = capsys.readouterr().err
    # one line each, starting with the word (a line "rejected" was counted twice: "rejected URL 'rejected'")
    assert sum(line.startswith("rejected ") for line in err.splitlines()) == rejected.count and "Traceback" not in err
    for raw, fp in entries:
        env = Envelope.loads(raw)
        assert env.fp == fp and env.run == "r1" and env.spider == "s"
        assert env.to_request(None).url == env.url


def test_rejections_are_one_line_each_and_counted(capsys: pytest.CaptureFixture[str]) -> None:
    rejected = Rejected(DEFAULT_SCHEMES)
    urls = ["http://a.test/1", "file:///etc/hostname", "ftp://x/", "javascript:alert(1)", "http:///nohost",
            "http://exa mple.com/", "http://u:secret@a.test:99999/", "http://a.test/[/]", "http://a.test/2"]
    entries = list(seed_entries(urls, "s", "r1", None, rejected))
    assert len(entries) == 3 and rejected.count == 6
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 6, lines
    assert "file:///etc/hostname" in lines[0] and "not fetched" in lines[0]
    assert "no host" in lines[3] and "space" in lines[4]
    assert "secret" not in "\n".join(lines)  # credentials in a URL are never printed
