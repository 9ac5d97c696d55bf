"""scrapy-playwright's page methods travel through the queue (scraper.queue.pagemethods): a spider that waits
for its content keeps waiting under Fleet, and a queue entry cannot make a worker's browser touch local
files or navigate elsewhere."""

from __future__ import annotations

import json

import pytest
from scrapy import Request
from scrapy_playwright.page import PageMethod

from scraper.queue import pagemethods
from scraper.queue.entrycheck import EnvelopeError
from scraper.queue.envelope import Envelope

KEY = pagemethods.KEY


def roundtrip(meta: dict[str, object]) -> Request:
    env = Envelope.from_request(Request("https://a.example/", meta=meta), spider_name="s", run="r")
    return Envelope.loads(env.dumps()).to_request(None)


def test_page_methods_survive_the_queue() -> None:
    req = roundtrip({"playwright": True, KEY: [PageMethod("wait_for_selector", "h1.name", timeout=5000),
                                                PageMethod("evaluate", "window.scrollBy(0, 1000)")]})
    got = req.meta[KEY]
    assert [(p.method, p.args, p.kwargs) for p in got] == [
        ("wait_for_selector", ("h1.name",), {"timeout": 5000}), ("evaluate", ("window.scrollBy(0, 1000)",), {})]
    assert all(isinstance(p, PageMethod) for p in got) and req.meta["playwright"] is True
    named = roundtrip({KEY: {"wait": PageMethod("wait_for_load_state", "networkidle")}}).meta[KEY]
    assert isinstance(named["wait"], PageMethod) and named["wait"].args == ("networkidle",)


@pytest.mark.parametrize("pm", [
    PageMethod("screenshot", path="/tmp/x.png"),  # writes a local file
    PageMethod("set_input_files", "input", "/etc/passwd"),  # reads one
    PageMethod("goto", "http://169.254.169.254/"),  # navigates where Fleet's checks never look
    PageMethod(lambda page: None),  # a callable: not data
    PageMethod("evaluate", object()),  # arguments that are not JSON
])
def test_what_cannot_travel_is_left_out_when_queued(pm: PageMethod) -> None:
    req = roundtrip({"playwright": True, KEY: [PageMethod("wait_for_timeout", 10), pm]})
    assert KEY not in req.meta and req.meta["playwright"] is True


@pytest.mark.parametrize("value", [
    [{"$pagemethod": ["screenshot", [], {"path": "/tmp/pwn.png"}]}],
    [{"$pagemethod": ["goto", ["http://127.0.0.1:6379/"], {}]}],
    [{"$pagemethod": ["click", "not a list", {}]}],
    [{"$pagemethod": ["click", [], {}], "extra": 1}],
    [{"method": "click"}],
    "wait_for_selector",
])
def test_a_hostile_entry_is_refused(value: object) -> None:
    raw = json.loads(Envelope(url="https://a.example/", spider="s", run="r", fp="0" * 16).dumps())
    raw["meta"] = {KEY: value}
    with pytest.raises(EnvelopeError):
        Envelope.loads(json.dumps(raw)).to_request(None)
