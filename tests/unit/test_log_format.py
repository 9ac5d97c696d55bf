"""FLEET_LOG_FORMAT: which format is chosen (terminal or not, forced), what the console format prints,
Scrapy's start-up dumps lowered to DEBUG, and when a progress bar is drawn."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from scraper.infra import console, log, progress
from scraper.infra import redact as redact_mod
from scraper.infra.config import ConfigError, FleetConfig


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def real_tty() -> Iterator[Any]:
    """The slave side of a real pseudo-terminal, opened as a text stream."""
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w")
    try:
        yield stream
    finally:
        stream.close()
        os.close(master)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Tests here reconfigure logging; later tests get JSON at INFO and their sink back."""
    stream = log._BufferedLogger._stream
    yield
    log.configure("INFO", "json")
    log._BufferedLogger._stream = stream


def test_auto_is_console_on_a_terminal_and_json_otherwise(real_tty: Any) -> None:
    assert console.choose_format("auto", real_tty) == "console"
    assert console.choose_format("auto", _Stream(tty=False)) == "json"
    assert console.choose_format("auto", io.StringIO()) == "json"
    r, w = os.pipe()
    with os.fdopen(r) as rf, os.fdopen(w, "w") as wf:
        assert console.choose_format("auto", wf) == "json"
        assert console.choose_format("auto", rf) == "json"


def test_a_forced_format_wins_over_the_terminal(real_tty: Any) -> None:
    assert console.choose_format("json", real_tty) == "json"
    assert console.choose_format("console", _Stream(tty=False)) == "console"


def test_a_closed_stream_counts_as_no_terminal() -> None:
    s = io.StringIO()
    s.close()
    assert console.choose_format("auto", s) == "json"


def test_config_reads_and_checks_fleet_log_format() -> None:
    assert FleetConfig.from_env({}).log_format == "auto"
    assert FleetConfig.from_env({"FLEET_LOG_FORMAT": " Console "}).log_format == "console"
    assert FleetConfig.from_env({"FLEET_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="FLEET_LOG_FORMAT"):
        FleetConfig.from_env({"FLEET_LOG_FORMAT": "xml"})


def test_console_format_renders_fleet_and_scrapy_events_for_people(
    monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    err = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", err)
    assert log.configure("INFO", "console") == "console"
    log.get_logger(worker="w1").info("request_leased", run="r1", fp="abc", attempt=1,
                                      proxy="http://user:secret@p.example:8080")
    log.get_logger(worker="w1").warning("lease_lost", lease="l1")
    logging.getLogger("scrapy.core.engine").info("Spider opened")
    log.flush()
    lines = err.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert all(not line.startswith("{") for line in lines)
    assert "request_leased" in lines[0] and "fp=abc" in lines[0] and "attempt=1" in lines[0]
    assert "[info" in lines[0] and "[warning" in lines[1]
    assert "secret" not in err.getvalue()
    assert "Spider opened" in lines[2] and "scrapy.core.engine" in lines[2]
    assert "\x1b" not in err.getvalue()  # not a terminal: no colours even when console is forced


def test_json_format_is_unchanged_after_console(monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> None:
    err = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", err)
    log.configure("INFO", "console")
    log.configure("INFO", "json")
    sink = io.StringIO()
    log._BufferedLogger._stream = sink
    log.get_logger(worker="w1").info("request_leased", fp="abc")
    rec = json.loads(sink.getvalue())
    assert rec["event"] == "request_leased" and rec["fp"] == "abc" and err.getvalue() == ""


def test_console_escapes_control_characters_from_hostile_input() -> None:
    line = console.render_console({"event": "request_dead", "level": "warning", "timestamp": "2026-01-02T03:04:05.1Z",
                               "url": "http://h/\x1b]0;owned\x07\x1b[2J", "reason": "a\rb"}, colors=False)
    assert "\x1b" not in line and "\x07" not in line and "\r" not in line
    assert "\\x1b]0;owned\\x07" in line and line.startswith("03:04:05 ")
    assert console.console_line("not json \x1b[31m", colors=False) == "not json \\x1b[31m"


def test_colours_only_on_a_terminal_without_no_color(real_tty: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert console.wants_colors(real_tty)
    assert not console.wants_colors(_Stream(tty=False))
    monkeypatch.setenv("NO_COLOR", "1")
    assert not console.wants_colors(real_tty)
    colored = console.render_console({"event": "e", "level": "error"}, colors=True)
    assert "\x1b[" in colored


# --------------------------------------------------------------------------------------------
# Scrapy's dumps
# --------------------------------------------------------------------------------------------


def _record(name: str, level: int, msg: str, args: Any = None) -> logging.LogRecord:
    # as Logger.makeRecord does: a mapping of arguments travels as a one-tuple
    return logging.LogRecord(name, level, __file__, 1, msg, (args,) if isinstance(args, dict) else args, None)


DUMPS = [
    ("scrapy.utils.log", "Versions:\n{'lxml': '6'}", None),
    ("scrapy.crawler", "Overridden settings:\n%(settings)s", {"settings": "{}"}),
    ("scrapy.middleware", "Enabled %(componentname)ss:\n%(enabledlist)s",
     {"componentname": "extension", "enabledlist": "[]"}),
    ("scrapy.addons", "Enabled addons:\n%(addons)s", {"addons": "[]"}),
    ("scrapy.statscollectors", "Dumping Scrapy stats:\n{'a': 1}", None),
]


@pytest.mark.parametrize(("name", "msg", "args"), DUMPS)
def test_scrapy_dumps_are_debug(name: str, msg: str, args: Any, restore_logging: None) -> None:
    f = log.StartupDumpFilter()
    log.configure("INFO", "json")
    rec = _record(name, logging.INFO, msg, args)
    assert f.filter(rec) is False
    assert (rec.levelno, rec.levelname) == (logging.DEBUG, "DEBUG")
    log.configure("DEBUG", "json")
    assert f.filter(_record(name, logging.INFO, msg, args)) is True  # FLEET_LOG_LEVEL=DEBUG shows them


def test_disabled_components_are_info_not_warnings(restore_logging: None) -> None:
    f = log.StartupDumpFilter()
    log.configure("INFO", "json")
    rec = _record("scrapy.middleware", logging.WARNING, "Disabled %(clspath)s: %(eargs)s",
                  {"clspath": "middlewares.proxy.ProxyMiddleware", "eargs": "FLEET_PROXIES is not set"})
    assert f.filter(rec) is True and rec.levelname == "INFO"
    log.configure("WARNING", "json")
    assert f.filter(_record("scrapy.middleware", logging.WARNING, "Disabled x: y")) is False


@pytest.mark.parametrize(("name", "secret"), [
    ("AWS_SECRET_ACCESS_KEY", True), ("AWS_SESSION_TOKEN", True), ("FTP_PASSWORD", True), ("DB_PASSWD", True),
    ("API_KEY", True), ("AWS_ACCESS_KEY_ID", True), ("KEYS", True), ("PROXY_AUTH", True),
    ("GCP_CREDENTIALS", True), ("client_secret", True),
    ("MONKEY", False), ("KEYWORDS", False), ("USER_AGENT", False), ("AWS_ENDPOINT_URL", False), ("REDIS_URL", False),
])
def test_secret_setting_names(name: str, secret: bool) -> None:
    assert redact_mod.secret_setting(name) is secret


def test_redact_setting_values() -> None:
    r = redact_mod.redact_setting
    assert r("AWS_SECRET_ACCESS_KEY", "s3cr3t") == "***" and r("API_KEY", 12345) == "***"
    assert r("AWS_SECRET_ACCESS_KEY", None) is None and r("HTTPAUTH_ENABLED", True) is True  # unset / a switch
    assert r("REDIS_URL", "redis://:pw@r:6379/0") == "redis://***@r:6379/0"
    assert r("PROXIES", ["http://u:pw@p:1", "http://p:2"]) == ["http://***@p:1", "http://p:2"]
    assert r("FEEDS", {"s3://k:pw@b/x.jl": {"format": "jsonl", "token": "t"}}) == {
        "s3://***@b/x.jl": {"format": "jsonl", "token": "***"}}
    assert r("USER_AGENT", "bot/1.0") == "bot/1.0" and r("CONCURRENT_REQUESTS", 8) == 8


def test_the_settings_dump_scrapy_logs_is_redacted(monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> None:
    """After redact_settings_dump, the dict Scrapy's crawler logs holds redacted values and the filter lets
    it through; before (another Scrapy, another code path), the filter withholds the dump's values."""
    import scrapy.crawler
    from scrapy.settings import Settings

    monkeypatch.setattr(scrapy.crawler, "overridden_settings", scrapy.crawler.overridden_settings)
    settings = Settings({"AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ENDPOINT_URL": "https://u:pw@s3.test",
                         "USER_AGENT": "bot/1.0"})
    log.configure("DEBUG", "json")
    rec = _record("scrapy.crawler", logging.INFO, "Overridden settings:\n%(settings)s", {"settings": "{'X': 's3cr3t'}"})
    assert log.StartupDumpFilter().filter(rec) is True and "s3cr3t" not in rec.getMessage()
    log.redact_settings_dump()
    dump = dict(scrapy.crawler.overridden_settings(settings))
    assert dump["AWS_SECRET_ACCESS_KEY"] == "***" and dump["AWS_ENDPOINT_URL"] == "https://***@s3.test"
    assert dump["USER_AGENT"] == "bot/1.0"
    rec = _record("scrapy.crawler", logging.INFO, "Overridden settings:\n%(settings)s", {"settings": repr(dump)})
    assert log.StartupDumpFilter().filter(rec) is True and "AWS_SECRET_ACCESS_KEY': '***'" in rec.getMessage()


@pytest.mark.parametrize(("name", "level", "msg"), [
    ("scrapy.core.engine", logging.INFO, "Spider opened"),
    ("scrapy.utils.log", logging.INFO, "Scrapy %(version)s started (bot: %(bot)s)"),
    ("scrapy.core.scraper", logging.ERROR, "Enabled but broken"),  # an error stays an error
    ("fleet.other", logging.INFO, "Enabled something"),  # not Scrapy's
])
def test_other_records_pass_untouched(name: str, level: int, msg: str, restore_logging: None) -> None:
    log.configure("INFO", "json")
    rec = _record(name, level, msg)
    assert log.StartupDumpFilter().filter(rec) is True and rec.levelno == level


def test_the_dumps_never_reach_stderr_through_configure(
    monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    err = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", err)
    log.configure("INFO", "console")
    logging.getLogger("scrapy.statscollectors").info("Dumping Scrapy stats:\n{'a': 1}")
    logging.getLogger("scrapy.middleware").info("Enabled %(c)ss:\n%(l)s", {"c": "extension", "l": "[]"})
    logging.getLogger("scrapy.core.engine").info("Spider closed (finished)")
    assert "Dumping" not in err.getvalue() and "Enabled" not in err.getvalue()
    assert "Spider closed" in err.getvalue()
    log.configure("DEBUG", "console")
    logging.getLogger("scrapy.statscollectors").info("Dumping Scrapy stats:\n{'a': 1}")
    assert "Dumping Scrapy stats" in err.getvalue() and "[debug" in err.getvalue()


# --------------------------------------------------------------------------------------------
# When a bar is drawn
# --------------------------------------------------------------------------------------------


def test_progress_only_for_a_person_at_a_terminal(real_tty: Any) -> None:
    term = {"TERM": "xterm-256color"}
    assert progress.enabled("auto", real_tty, term)
    assert progress.enabled("console", real_tty, term)
    assert not progress.enabled("auto", _Stream(tty=False), term)
    assert not progress.enabled("console", _Stream(tty=False), term)  # forced console into a file: no bar
    assert not progress.enabled("json", real_tty, term)
    assert not progress.enabled("auto", real_tty, {**term, "CI": "true"})
    assert progress.enabled("auto", real_tty, {**term, "CI": "false"})
    assert not progress.enabled("auto", real_tty, {"TERM": "dumb"})


def test_run_workers_events_under_a_bar_from_warning_unless_a_level_is_set() -> None:
    assert progress.display_level({}) == logging.WARNING
    assert progress.display_level({"FLEET_LOG_LEVEL": "info"}) == logging.INFO
    assert progress.display_level({"FLEET_LOG_LEVEL": "nonsense"}) == logging.WARNING


def test_seed_without_a_terminal_is_the_plain_iterator(tmp_path: Any) -> None:
    f = tmp_path / "urls.txt"
    f.write_text("http://a.example/\n" * (progress.SEED_BAR_MIN_BYTES // 10))
    urls = ["http://a.example/", "http://b.example/"]
    assert list(progress.track_urls(iter(urls), str(f), show=False)) == urls
    assert list(progress.track_urls(iter(urls), str(tmp_path / "missing"), show=True)) == urls


def test_worker_lines_under_a_bar_count_items_filter_and_rate_limit() -> None:
    """`fleet run`'s reader of a worker's stderr: items from object_written (INFO, not shown), a flood of
    warnings cut to the rate limit with a count, every error shown, the pipe read to its end."""
    from rich.console import Console
    from rich.progress import Progress

    def line(level: str, event: str, **kw: Any) -> bytes:
        rec = {**kw, "event": event, "level": level, "timestamp": "2026-01-02T03:04:05.0Z"}
        return json.dumps(rec).encode() + b"\n"

    data = b"".join(
        [line("info", "object_written", items=2, fp=f"f{i}") for i in range(5)]
        + [line("warning", "request_dead", reason="x", url=f"http://h/{i}\x1b[2J") for i in range(300)]
        + [line("error", "redis_outage_exceeded", seconds=1)] * 3
        + [b"error: plain text from rich\n", b"{not json\n"]
    )
    out = io.StringIO()
    bar = progress.RunProgress("redis://127.0.0.1:1/0", "s", "r", show=False)
    bar.progress = Progress(console=Console(file=out, width=300, color_system=None))
    stream = io.BytesIO(data)
    bar._pump(stream, logging.WARNING)
    text = out.getvalue()
    assert stream.read() == b""
    assert bar._items() is None  # forward() was not called: items unknown
    assert bar._items_seen == 10
    assert "object_written" not in text
    shown = text.count("request_dead")
    assert 1 <= shown <= progress.LINES_PER_SECOND + 5, shown
    assert "not shown" in text
    assert text.count("redis_outage_exceeded") == 3
    assert "\x1b" not in text and "\\x1b[2J" in text
