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
    assert [p.method for p in req.meta[KEY]] == ["wait_for_timeout"]  # the wait still travels
    assert KEY not in roundtrip({KEY: [pm]}).meta and req.meta["playwright"] is True


def test_a_screenshot_without_a_path_travels_and_a_value_scrapy_playwright_reads_as_none_is_not_queued() -> None:
    assert [p.method for p in roundtrip({KEY: [PageMethod("screenshot", full_page=True)]}).meta[KEY]] == ["screenshot"]
    assert KEY not in roundtrip({KEY: None}).meta and KEY not in roundtrip({KEY: ["click"]}).meta


def test_waits_cannot_hold_a_browser_page_for_ever() -> None:
    waits = roundtrip({KEY: [PageMethod("wait_for_timeout", 10**10), PageMethod("wait_for_selector", "h1", timeout=0),
                             PageMethod("wait_for_selector", "h2", timeout=5000)]}).meta[KEY]
    assert waits[0].args == (pagemethods.MAX_WAIT_MS,) and waits[1].kwargs == {"timeout": pagemethods.MAX_WAIT_MS}
    assert waits[2].kwargs == {"timeout": 5000}


def test_an_entry_reaches_no_further_than_the_page() -> None:
    """A review: an entry's playwright_context_kwargs went to launch_persistent_context (executable_path: any
    program); its goto kwargs to page.goto; its event handlers named spider attributes called unchecked."""
    raw = json.loads(Envelope(url="https://a.example/", spider="s", run="r", fp="0" * 16).dumps())
    raw["meta"] = {"playwright": True, "playwright_context": "x",
                   "playwright_context_kwargs": {"user_data_dir": "/tmp/x", "executable_path": "/bin/sh"},
                   "playwright_page_event_handlers": {"console": "close"}, "playwright_page_init_callback": "close",
                   pagemethods.GOTO_KEY: {"timeout": 0, "wait_until": "load", "referer": "https://r/", "x": 1}}
    meta = Envelope.loads(json.dumps(raw)).to_request(None).meta
    assert not {"playwright_context_kwargs", "playwright_page_event_handlers", "playwright_page_init_callback"} & set(meta)
    assert meta[pagemethods.GOTO_KEY] == {"wait_until": "load", "referer": "https://r/",
                                          "timeout": pagemethods.MAX_WAIT_MS}


@pytest.mark.parametrize("value", [
    [{"$pagemethod": ["screenshot", [], {"path": "/tmp/pwn.png"}]}],
    [{"$pagemethod": ["goto", ["http://127.0.0.1:6379/"], {}]}],
    [{"$pagemethod": ["click", "not a list", {}]}],
    [{"$pagemethod": ["click", [], {}], "extra": 1}],
    [{"$pagemethod": ["click", ["a"], {"method": "x"}]}],  # PageMethod's own argument: a TypeError once
    [{"$pagemethod": ["click", ["a"], {"nosuch": 1}, 4]}],
    [{"$pagemethod": ["screenshot", [], {"path": "x.png"}]}],
    [{"method": "click"}],
    "wait_for_selector",
])
def test_a_hostile_entry_is_refused(value: object) -> None:
    raw = json.loads(Envelope(url="https://a.example/", spider="s", run="r", fp="0" * 16).dumps())
    raw["meta"] = {KEY: value}
    with pytest.raises(EnvelopeError):
        Envelope.loads(json.dumps(raw)).to_request(None)


def test_evidence_shows_page_methods_by_name_only() -> None:
    """What the spider typed into a page (a password in ``fill``) does not go to drift evidence."""
    env = Envelope.from_request(Request("https://a.example/", meta={KEY: [
        PageMethod("fill", "#password", "s3cr3t"), PageMethod("click", "button")]}), spider_name="s", run="r")
    shown = pagemethods.shown(env.meta)
    assert shown[KEY] == ["fill", "click"] and "s3cr3t" not in json.dumps(shown)
    assert pagemethods.shown({"a": 1}) == {"a": 1}
