"""A COMMIT batch behaves exactly as its commits one call each (issue #18: COMMIT reads and writes once per
batch, lua/commit.lua "Batched"), on a real redis-server.

Two spiders on one server get the same start entries, the same leases and the same random commits: one
spider in one call, the other one call per commit. The commits mix what a batch can hold: children
shared between commits and with SEEN/DONE, ``dont_filter`` children, redirect hops, claims, strict acks of
leases that are and are not still ours, children-only commits, item/navigation outcomes, a half-open
breaker whose probe closes it (releasing a parked request). The replies and every structure the scripts
keep (SEEN, DONE, READY in order, envelopes, leases, breaker window) must come out the same.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import redis.asyncio as aioredis
from scrapy import Request

from scraper.queue.client import Commit, CommitReply, FleetQueue
from scraper.queue.envelope import Envelope, rule_domain

pytestmark = pytest.mark.integration

RUN = "r1"
DOMAIN = "shop.example"
POOL = [f"p{i}" for i in range(14)]


def _env(spider: str, path: str, *, dont_filter: bool = False) -> Envelope:
    return Envelope.from_request(
        Request(f"https://{DOMAIN}/{path}", dont_filter=dont_filter), spider_name=spider, run=RUN
    )


def _plan(rng: random.Random, starts: list[str]) -> list[dict[str, Any]]:
    """The commits, spider-neutral: per leased start (by path) what it does."""
    plan = []
    for n, path in enumerate(starts):
        kids = [(rng.choice(POOL), rng.random() < 0.15) for _ in range(rng.randrange(0, 4))]
        plan.append(
            {
                "path": path,
                "kids": kids,
                "hops": [rng.choice(POOL) for _ in range(rng.choice((0, 0, 1, 2)))],
                "outcome": rng.choice(("o", "n", "", "h")),  # 'h': a children commit's (lua/commit.lua)
                "strict": rng.random() < 0.25,
                "stale": rng.random() < 0.15,
                "done": rng.random() > 0.1,
                "claim": rng.randrange(0, len(kids) + 1),
                "ids": [f"c{n}x{j}" for j in range(len(kids))],
            }
        )
    return plan


async def _setup(q: FleetQueue, client: Any, starts: list[str], pre_seen: list[str]) -> dict[str, Any]:
    spider = q.keys.spider
    await q.seed(RUN, [_env(spider, p) for p in starts])
    batch = await q.lease(len(starts), worker="w", lease_seconds=60)
    leases = {Envelope.loads(le.raw).url.rsplit("/", 1)[-1]: le for le in batch.leased}
    assert len(leases) == len(starts)
    await q.commit([Commit("", "", RUN, "", [_env(spider, p) for p in pre_seen], done=False)], ack=False)
    # a parked request behind a half-open breaker whose probe is the first start's lease
    probe = leases[starts[0]].id
    park = _env(spider, "parked")
    await client.hset(q.keys.env, "parked1", park.dumps())
    await client.zadd(q.keys.parked(DOMAIN), {"parked1": 1})
    await client.sadd(q.keys.parkdom, DOMAIN)
    await client.hset(q.keys.breaker(DOMAIN), mapping={"state": "half_open", "probe": probe, "probe_until": 9e9})
    await client.hset(q.keys.brk, DOMAIN, "half|9e9")
    return leases


def _commits(q: FleetQueue, plan: list[dict[str, Any]], leases: dict[str, Any]) -> list[Commit]:
    spider = q.keys.spider
    out = []
    for c in plan:
        le = leases[c["path"]]
        env = Envelope.loads(le.raw)
        kids = [_env(spider, p, dont_filter=df) for p, df in c["kids"]]
        out.append(
            Commit(
                le.id,
                le.token + ("-stale" if c["stale"] else ""),
                RUN,
                env.fp,
                kids,
                domain=DOMAIN,
                outcome=c["outcome"],
                done=c["done"],
                claim=c["claim"],
                ids=c["ids"],
                hops=[_env(spider, h).fp for h in c["hops"]],
                strict=c["strict"],
            )
        )
    return out


async def _state(q: FleetQueue, client: Any) -> dict[str, Any]:
    k = q.keys
    spider = k.spider

    async def members(key: str) -> set[str]:
        paths = [*POOL, "parked"]
        return {
            p for p, has in zip(paths, await q.has_member(key, [_env(spider, p).fp for p in paths]), strict=True) if has
        }

    async def path(i: bytes) -> str:
        raw = await client.hget(k.env, i)
        return Envelope.loads(raw).url.rsplit("/", 1)[-1] if raw else f"?{i!r}"

    ready = [await path(i) for i in await client.zrange(k.ready, 0, -1)]
    inflight = sorted([await path(i) for i in await client.zrange(k.inflight, 0, -1)])
    envs = sorted([Envelope.loads(v).url.rsplit("/", 1)[-1] for v in (await client.hgetall(k.env)).values()])
    return {
        "seen": await members(k.seen(RUN)),
        "done": await members(k.done(RUN)),
        "seen_count": await client.hget(k.seen(RUN), "count"),
        "done_count": await client.hget(k.done(RUN), "count"),
        "ready": ready,
        "inflight": inflight,
        "env": envs,
        "breaker": await client.hmget(k.breaker(DOMAIN), "state", "window"),
        "brk": await client.hget(k.brk, DOMAIN),
        "parked": await client.zcard(k.parked(DOMAIN)),
    }


def _reply(rs: list[CommitReply]) -> tuple[Any, ...]:
    claims = [(bool(t), d) for r in rs for t, d in r.claims]
    return (
        [x for r in rs for x in r.enqueued],
        [x for r in rs for x in r.events],
        [x for r in rs for x in r.acked],
        claims,
    )


@pytest.mark.parametrize("seed", range(12))
def test_a_batch_is_its_commits_one_by_one(redis_url: str, seed: int) -> None:
    rng = random.Random(seed)
    starts = rng.sample(POOL, 6)
    pre_seen = rng.sample([p for p in POOL if p not in starts], 3)
    plan = _plan(rng, starts)

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
        try:
            qa, qb = FleetQueue(client, "batched"), FleetQueue(client, "onebyone")
            la = await _setup(qa, client, starts, pre_seen)
            lb = await _setup(qb, client, starts, pre_seen)
            ra = [await qa.commit_claiming(_commits(qa, plan, la), worker="w", lease_seconds=60, nonce="n")]
            rb = [
                await qb.commit_claiming([c], worker="w", lease_seconds=60, nonce=f"n{i}")
                for i, c in enumerate(_commits(qb, plan, lb))
            ]
            assert _reply(ra) == _reply(rb)
            assert await _state(qa, client) == await _state(qb, client)
        finally:
            await client.aclose()

    asyncio.run(main())


def _head_script() -> str:
    from scraper.queue import scripts

    body = "local run, fp, domain = env_head(ARGV[1])\nreturn {run or '<nil>', fp or '<nil>', domain or '<nil>'}\n"
    return scripts.with_helpers(body)


def _by_cjson(raw: str) -> list[str]:
    """run, fp, domain as LEASE took them from cjson.decode: '<nil>' where not a string (or not an object)."""
    import json

    try:
        d = json.loads(raw)
    except ValueError:
        return ["<nil>"] * 3
    if not isinstance(d, dict):
        return ["<nil>"] * 3
    domain = d.get("domain")
    if "domain" not in d and isinstance(d.get("url"), str):  # Fleet leaves it out when the URL gives it
        domain = rule_domain(d["url"])
    return [v if isinstance(v, str) else "<nil>" for v in (d.get("run"), d.get("fp"), domain)]


def test_env_head_reads_what_cjson_reads(redis_url: str) -> None:
    """LEASE reads run/fp/domain with anchored patterns when the JSON is Envelope.dumps' own layout and
    decodes it otherwise (lua/_helpers.lua: env_head): the answer is cjson's either way."""
    import redis

    spider = "heads"
    plain = _env(spider, "a")
    lost = Envelope.loads(plain.dumps())
    lost.lost = 3
    odd = Envelope.from_request(
        Request(
            "https://shop.example/q?x=%22y%22&z=\u00e9",
            meta={"domain": "evil.example", "run": "other", "fp": "0" * 16, "x": {"domain": "deeper"}},
        ),
        spider_name=spider,
        run="r1",
    )
    quoted = odd.to_dict()
    quoted["run"] = 'r"quoted'  # not a run Fleet accepts, but an entry anyone could write
    tail = plain.to_dict()
    tail["domain"] = None
    moved = {"domain": "first.example", **{k: v for k, v in plain.to_dict().items() if k != "domain"}}
    cases = [
        plain.dumps(),
        lost.dumps(),
        odd.dumps(),
        Envelope.loads(odd.dumps()).dumps(),
        __import__("json").dumps(quoted, separators=(",", ":")),
        __import__("json").dumps(tail),
        __import__("json").dumps(moved),
        __import__("json").dumps(moved)[:-1],
        "[1,2]",
        "not json",
        '"a string"',
        "5",
        "null",
        '{"v":1,"url":"x","spider":"s","run":"r","fp":"f","domain":"d"}',
        # no "domain" (Fleet's layout when the URL gives it: rule_domain), the fp last or not
        '{"v":1,"url":"https://A.b-c.example:81/x","spider":"s","run":"r","fp":"f"}',
        '{"v":1,"url":"https://a.example","spider":"s","run":"r","fp":"f","depth":2}',
        '{"v":1,"url":"https:\\/\\/a.example/","spider":"s","run":"r","fp":"f"}',
        '{"v":1,"url":"https://u@a.example/","spider":"s","run":"r","fp":"f"}',
        '{"v":1,"url":"https://a.example/","spider":"s","run":"r","fp":"f","meta":{"domain":"in"}}',
        '{"v":1,"url":"https://a.example/","spider":"s","run":"r","fp":"f","domain":null}',
        # found by review: a second top-level "url" (cjson keeps the last)
        '{"v":1,"url":"https://a.example/","spider":"s","run":"r","fp":"f","url":"https://b.example/"}',
        '{"v":1,"url":"x","spider":"s","run":"r","fp":"f","meta":{"domain":"in"},"domain":"out"}',
        '{"v":1,"url":"x","spider":"s","run":"r","fp":"f","meta":{"a":1,"domain":"in"}}',
        # found by review: a repeated key spelt with a space before ':' or with an escape
        '{"v":1,"url":"x","spider":"s","run":"r1","fp":"f","x":1,"run" :"r2","domain":"d"}',
        '{"v":1,"url":"x","spider":"s","run":"r1","fp":"f","\\u0072un":"r2","domain":"d"}',
        '{"v":1,"url":"x","spider":"s","run":"r1","fp":"f","\\u0066p":"fedcba9876543210","domain":"d"}',
        # found by review: another key after the URL, and a nested object's spider/run/fp
        '{"v":1,"url":"x","depth":1,"run":"T","fp":"0123456789abcdef",'
        '"meta":{"a":"","spider":"s","run":"R","fp":"fedcba9876543210","b":1},"domain":"d"}',
    ]
    r = redis.Redis.from_url(redis_url)
    try:
        src = _head_script()
        for raw in cases:
            assert [x.decode() for x in r.eval(src, 0, raw)] == _by_cjson(raw), raw
    finally:
        r.close()


def test_url_domain_is_rule_domain(redis_url: str) -> None:
    """The scripts' url_domain and Python's rule_domain give the same domain for every URL (a difference
    would hold or break an envelope's requests under another domain than its worker's): fixed hostile cases
    and 2,000 generated ones (case, userinfo, ports, IPv6, escapes, non-ASCII, control characters)."""
    import redis

    from scraper.queue import scripts

    rng = random.Random(1818)
    alphabet = ["a", "Z", "0", ".", "-", "_", "@", ":", "/", "?", "#", "%", "[", "]", "\\", " ", "\t", "é", "\x00", ";"]
    urls = ["https://a.example/", "https://A.EXAMPLE", "http://a.example:8080/x", "https://u:p@a.example/",
            "https://[::1]/", "HTTPS://a.example/", "https://", "https:///x", "ftp://a.example/", " https://a.example/",
            "https://a.example\t/", "https://xn--bcher-kva.example/", "https://a..b/", "https://a.example./"]
    for _ in range(2000):
        urls.append(rng.choice(["https://", "http://", "http:/", ""]) + "".join(
            rng.choice(alphabet) for _ in range(rng.randrange(0, 12))))
    body = ("local out = {}\nfor i = 1, #ARGV do out[i] = url_domain(ARGV[i]) or '<nil>' end\nreturn out\n")
    src = scripts.with_helpers(body)
    r = redis.Redis.from_url(redis_url)
    try:
        for i in range(0, len(urls), 500):
            chunk = urls[i : i + 500]
            got = r.eval(src, 0, *[u.encode() for u in chunk])
            for url, lua in zip(chunk, got, strict=True):
                assert lua.decode() == (rule_domain(url) or "<nil>"), url
    finally:
        r.close()


def _tricky(rng: random.Random) -> str:
    """A string that may hold what env_head's plain finds must not be fooled by: quotes, backslashes,
    the layout's own tokens, escapes, non-ASCII."""
    parts = ['"', "\\", '","spider":"', '","run":"', '","fp":"', ',"domain":"', '"run"', '"fp"', "\\u0041",
             "é", "\u2028", "}", "{", ":", ",", "a", "b/c", " "]
    return "".join(rng.choice(parts) for _ in range(rng.randrange(0, 6)))


def test_env_head_reads_what_cjson_reads_fuzzed(redis_url: str) -> None:
    """env_head against cjson's reading on 1,000 generated envelopes: Fleet's own layout with tricky URLs,
    spiders, runs, fingerprints, domains and metas (quotes, backslashes, the layout's tokens inside
    strings, nested and repeated "run"/"fp"/"domain" keys), with and without "lost", ASCII-escaped or not,
    and the keys shuffled now and then. Every one is valid JSON, where the answer must be cjson's."""
    import json

    import redis

    rng = random.Random(18)
    cases = []
    for _ in range(1000):
        d: dict[str, Any] = {"v": 1, "url": "https://x.example/" + _tricky(rng), "spider": "s" + _tricky(rng),
                             "run": rng.choice(["r1", "r-2.x", _tricky(rng)]),
                             "fp": rng.choice([f"{rng.getrandbits(64):016x}", _tricky(rng)])}
        if rng.random() < 0.5:
            d["meta"] = {rng.choice(["run", "fp", "domain", "x"]): _tricky(rng) or "v"}
        if rng.random() < 0.3:
            d["callback"] = _tricky(rng) or "parse"
        if rng.random() < 0.3:  # Fleet's own layout since #18: no "domain", the URL's host (rule_domain)
            d["url"] = rng.choice(["https://", "http://", "HTTPS://", "https://u@"]) + rng.choice(
                ["Shop.Example", "a-b.c", "x:8080", "[::1]", "h%41", "h\\/", ""]) + rng.choice(["", "/", "?q", "#f", "é", "\\"]
            ) + _tricky(rng)
        else:
            d["domain"] = rng.choice(["shop.example", _tricky(rng)])
        if rng.random() < 0.2:  # a nested object with the layout's own keys, after the URL (review)
            d = {"v": 1, "url": d["url"], "depth": 1, "run": d["run"], "fp": d["fp"],
                 "meta": {"a": "", "spider": "s", "run": "R", "fp": "fedcba9876543210", "b": 1},
                 **({"domain": d["domain"]} if "domain" in d else {})}
        if rng.random() < 0.3:
            d = {"lost": rng.randrange(1, 5), **d}
        if rng.random() < 0.1:
            items = list(d.items())
            rng.shuffle(items)
            d = dict(items)
        raw = json.dumps(d, separators=(",", ":"), ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.1:  # a repeated top-level key after the fp: cjson (and Python) keep the last
            key = rng.choice(["run", "fp", "domain", "url"])
            raw = raw[:-1] + f',"{key}":"again"}}'
        cases.append(raw)
    body = ("local out = {}\nfor i = 1, #ARGV do\n  local run, fp, domain = env_head(ARGV[i])\n"
            "  out[i] = {run or '<nil>', fp or '<nil>', domain or '<nil>'}\nend\nreturn out\n")
    from scraper.queue import scripts

    src = scripts.with_helpers(body)
    r = redis.Redis.from_url(redis_url)
    try:
        for i in range(0, len(cases), 100):
            chunk = cases[i : i + 100]
            for raw, got in zip(chunk, r.eval(src, 0, *[c.encode() for c in chunk]), strict=True):
                assert [x.decode() for x in got] == _by_cjson(raw), raw
    finally:
        r.close()


def _none_differ(redis_url: str, src: str, args: list[Any]) -> None:
    """Run ``src`` over ``args`` 500 at a time (an even number: the pairs stay whole); it returns what
    differs, which must be nothing."""
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        for i in range(0, len(args), 500):
            assert r.eval(src, 0, *args[i : i + 500]) == []
    finally:
        r.close()


def test_packed_fingerprints_are_what_fpparts_makes(redis_url: str) -> None:
    """COMMIT is sent its fingerprints packed by Python (seenset.packed); fpsplit must give the bucket and
    member fpparts makes of the hex, or a commit would look in the wrong place of SEEN/DONE."""

    from scraper.queue import scripts
    from scraper.queue.seenset import packed

    src = scripts.with_helpers(
        "local out = {}\nfor i = 1, #ARGV, 2 do\n  local b, s = fpparts(ARGV[i])\n  local b2, s2 = fpsplit(ARGV[i + 1])\n"
        "  local b3, s3 = fpsplit(ARGV[i])\n"
        "  if b ~= b2 or s ~= s2 or b ~= b3 or s ~= s3 then out[#out + 1] = ARGV[i] end\nend\nreturn out\n"
    )
    rng = random.Random(11)
    fps = [f"{rng.getrandbits(64):016x}" for _ in range(1000)] + ["0" * 16, "f" * 16, "0123456789abcdef"]
    args: list[Any] = []
    for fp in fps:
        args += [fp, packed(fp)]
    _none_differ(redis_url, src, args)
    for bad in ("abc", "abc 0123 456789a", "ghij0123456789ab", "ABCDEF0123456789"):
        with pytest.raises(ValueError):
            packed(bad)


def test_fleet_envelopes_are_read_without_cjson(redis_url: str) -> None:
    """The point of env_head: Envelope.dumps' output (with and without "lost") never reaches cjson."""
    import redis

    src = _head_script().replace(
        "  local ok, e = pcall(cjson.decode, json)",
        "  do return 'cjson', '', '' end\n  local ok, e = pcall(cjson.decode, json)",
    )
    assert "'cjson'" in src
    plain = _env("heads", "b")
    lost = Envelope.loads(plain.dumps())
    lost.lost = 12
    r = redis.Redis.from_url(redis_url)
    try:
        for env in (plain, lost):
            assert [x.decode() for x in r.eval(src, 0, env.dumps())] == [RUN, env.fp, DOMAIN]
    finally:
        r.close()


def test_fpparts_arithmetic_equals_the_pairwise_decoding(redis_url: str) -> None:
    """fpparts unpacks a 16-hex fingerprint by arithmetic (lua/_helpers.lua); the member bytes must be what
    the general pairwise hex2bin gives, or SEEN/DONE written before would not be found."""

    from scraper.queue import scripts

    src = scripts.with_helpers(
        "local out = {}\nfor i = 1, #ARGV do\n  local b, s = fpparts(ARGV[i])\n"
        "  if b ~= string.sub(ARGV[i], 1, 3) or s ~= hex2bin(string.sub(ARGV[i], 4, 16) .. '0') then\n"
        "    out[#out + 1] = ARGV[i]\n  end\nend\nreturn out\n"
    )
    rng = random.Random(7)
    fps = [f"{rng.getrandbits(64):016x}" for _ in range(2000)]
    fps += ["0" * 16, "f" * 16, "ffffff0000000000", "000000ffffff0000", "0123456789abcdef", "ABCDEF0123456789"]
    _none_differ(redis_url, src, fps)


# -- regressions found by review of the batched scripts (each asserts what one call per commit did) --------


def _sp(path: str, run: str = "r1", dom: str = "a.example", df: bool = False) -> Envelope:
    return Envelope.from_request(Request(f"https://{dom}/{path}", dont_filter=df), spider_name="sp", run=run)


async def _lease_all(q: FleetQueue, n: int) -> list[Any]:
    out: list[Any] = []
    while len(out) < n:
        out += (await q.lease(min(n - len(out), 2000), worker="w", lease_seconds=60)).leased
    return out


def _with_queue(redis_url: str, body: Any) -> None:
    async def main() -> None:
        c = aioredis.Redis.from_url(redis_url, socket_timeout=30)
        try:
            await body(FleetQueue(c, "sp", dedup_ttl=3600), c)
        finally:
            await c.aclose()

    asyncio.run(main())


def test_a_batch_bigger_than_unpacks_limit_commits(redis_url: str) -> None:
    """FLEET_COMMIT_BATCH has no maximum: 8,000 commits in one call (Lua's unpack stops near 8,000 values)."""

    async def body(q: FleetQueue, c: Any) -> None:
        await q.seed("r1", [_sp(f"p{i}") for i in range(8000)])
        leases = await _lease_all(q, 8000)
        _, _, acked = await q.commit([Commit(le.id, le.token, "r1", Envelope.loads(le.raw).fp) for le in leases])
        assert all(acked) and len(acked) == 8000

    _with_queue(redis_url, body)


def test_an_id_queued_then_claimed_in_one_batch_is_leased_once(redis_url: str) -> None:
    async def body(q: FleetQueue, c: Any) -> None:
        await q.seed("r1", [_sp("s1"), _sp("s2")])
        l1, l2 = await _lease_all(q, 2)
        reply = await q.commit_claiming(
            [
                Commit(l1.id, l1.token, "r1", Envelope.loads(l1.raw).fp, [_sp("x")], ids=["kid"]),
                Commit(l2.id, l2.token, "r1", Envelope.loads(l2.raw).fp, [_sp("y")], ids=["kid"], claim=1),
            ],
            worker="w",
            lease_seconds=60,
            nonce="n",
        )
        assert reply.claims[1][0]
        assert await c.zscore(q.keys.ready, "kid") is None
        assert await c.zscore(q.keys.inflight, "kid") is not None

    _with_queue(redis_url, body)


def test_parked_requests_a_batch_releases_are_newer_than_its_earlier_children(redis_url: str) -> None:
    """READY is newest first: a child queued by an earlier commit of the batch, then the half-open probe's 'o'
    closes its breaker and releases a parked request, which is newer, as with one call per commit."""

    async def body(q: FleetQueue, c: Any) -> None:
        await q.seed("r1", [_sp("s1"), _sp("s2", dom="b.example")])
        by_url = {Envelope.loads(le.raw).url: le for le in await _lease_all(q, 2)}
        l1, l2 = by_url["https://a.example/s1"], by_url["https://b.example/s2"]
        await c.hset(q.keys.env, "parked1", _sp("parked", dom="b.example").dumps())
        await c.zadd(q.keys.parked("b.example"), {"parked1": 1})
        await c.sadd(q.keys.parkdom, "b.example")
        await c.hset(q.keys.breaker("b.example"), mapping={"state": "half_open", "probe": l2.id, "probe_until": 9e9})
        await c.hset(q.keys.brk, "b.example", "half|9e9")
        await q.commit(
            [
                Commit(l1.id, l1.token, "r1", Envelope.loads(l1.raw).fp, [_sp("child1")], ids=["child1"]),
                Commit(l2.id, l2.token, "r1", Envelope.loads(l2.raw).fp, domain="b.example", outcome="o"),
            ]
        )
        assert [x.decode() for x in await c.zrange(q.keys.ready, 0, -1)] == ["parked1", "child1"]

    _with_queue(redis_url, body)


@pytest.mark.parametrize("shape", ["run_twice", "not_json"])
def test_an_entry_is_dropped_as_done_only_on_what_cjson_reads(redis_url: str, shape: str) -> None:
    """LEASE's patterns read the first "run"; cjson (and every Python reader) the last. And the patterns do not
    check the text between the fp and the domain. Either way an entry is only dropped unfetched as DONE on
    cjson's reading: here it is leased (a non-JSON one then goes to the DLQ from the worker)."""

    async def body(q: FleetQueue, c: Any) -> None:
        e1 = _sp("x")
        await q.seed("r1", [e1])
        (le,) = await _lease_all(q, 1)
        await q.commit([Commit(le.id, le.token, "r1", e1.fp)])
        if shape == "run_twice":
            raw = (
                '{"v":1,"url":"https://a.example/x","spider":"sp","run":"r1","fp":"' + e1.fp + '","run":"r2",'
                '"enqueued_at":1,"domain":"a.example"}'
            )
            assert Envelope.loads(raw).run == "r2"
        else:
            raw = (
                '{"v":1,"url":"https://a.example/x","spider":"sp","run":"r1","fp":"' + e1.fp + '",garbage,'
                '"domain":"a.example"}'
            )
        await c.hset(q.keys.env, "odd", raw)
        await c.zadd(q.keys.ready, {"odd": 0})
        b = await q.lease(10, worker="w", lease_seconds=60)
        assert [x.id for x in b.leased] == ["odd"] and not b.skipped

    _with_queue(redis_url, body)
