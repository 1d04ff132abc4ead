"""The iNaturalist source against a local fake API (`fake_inat.py`): truth, faults, politeness."""

from __future__ import annotations

import csv
import json
import logging
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fake_inat import RANDOM_FAULT_KINDS, FakeInat, Photo, World
from snakeid.config import ParamsError, from_dict
from snakeid.data.sources.inat import download_inat
from snakeid.data.sources.inat_client import (
    Budget,
    BudgetExhausted,
    InatError,
    InatSession,
    InatUnreachable,
)
from snakeid.data.sources.inat_config import InatConfig
from snakeid.data.sources.inat_pacing import RateLimiter
from snakeid.data.sources.inat_selection import resize_url
from snakeid.data.sources.inat_taxa import TaxonResolutionError
from snakeid.errors import UserError
from snakeid.taxa import Species
from snakeid.utils import sha256_file

NAMES = ["Naja kaouthia", "Bungarus fasciatus", "Calliophis bivirgata"]
# Columns compared with the fake's truth (the rest depend on the files: width, sha256, path).
KEYS = (
    "photo_id",
    "observation_id",
    "taxon",
    "license",
    "attribution",
    "url",
    "user_login",
    "observed_on",
    "latitude",
    "longitude",
    "place_ids",
)


def small_world() -> World:
    """Three species over several pages, with every case the downloader must get right."""
    w = World()
    w.species("Naja kaouthia", 101)
    w.subspecies(101, "suspecta", 1011)
    w.species("Bungarus fasciatus", 102)
    w.species("Calliophis bivirgatus", 104)
    w.species("Calliophis bivirgata", 103, is_active=False, synonyms=(104,))
    w.species("Sinomicrurus macclellandi", 105, other_names=("Calliophis macclellandi",))
    w.species("Homonymus duplex", 201)
    w.species("Homonymus duplex", 202, iconic="Plantae")
    w.observe(101, ["cc-by", None, "cc-by-nd", "cc0"])  # mixed licences in one observation
    w.observe(1011, ["cc-by-nc"])  # a subspecies counts for its species
    w.observe(102, ["cc0", "cc-by"])
    w.observe(101, [None, "cc-by-sa"])  # nothing usable
    w.observe(101, ["cc-by", "cc-by", "cc-by-nc", "cc-by", "cc0"])  # over the per-obs cap
    w.observe(101, ["cc0"], captive=True)
    w.observe(101, ["cc0"], quality_grade="needs_id")
    shared = w.photo("cc-by")
    w.observe(101, [shared, "cc0"])
    w.observe(101, [shared])  # the same photo in a second observation
    w.observe(104, ["cc-by-nc", "cc-by"])
    w.observe(101, [w.photo("cc0", "png"), w.photo("cc-by", "jpeg")])
    for i in range(7):
        w.observe(102, ["cc-by"] * (i % 3 + 1), user=f"u{i}", place_ids=(i, 97394))
        w.observe(104, ["cc0"], observed_on=f"2019-0{i + 1}-1{i}")
        w.observe(101, ["cc-by-nc", None])
    return w


def species(names: list[str] = NAMES, **ids: int) -> list[Species]:
    return [Species(n, n.split()[0], True, ids.get(n.replace(" ", "_"))) for n in names]


def fast(fake: FakeInat, **kw: Any) -> InatConfig:
    """Settings for tests: a local server may be hit fast, and backoff need not wait."""
    base = {"api_url": fake.api_url, "max_rps": 1000.0, "backoff_base_s": 0.001, "timeout_s": 5.0}
    return InatConfig(**(base | kw))


def compared(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: str(r[k]) for k in KEYS} for r in rows]


class FakeClock:
    """Monotonic clock and sleep that only pretend to wait."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


@pytest.fixture
def fake() -> FakeInat:
    with FakeInat(small_world(), max_per_page=3) as f:
        yield f


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # manifest paths are relative, as under `dvc repro`
    return Path("data/raw")


# ---------------------------------------------------------------------------------------------
# Config and small pieces


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"licenses": ["cc-by", "copyright"]}, "download.inat.licenses"),
        ({"licenses": []}, "download.inat.licenses"),
        ({"photo_size": "huge"}, "download.inat.photo_size"),
        ({"d1": "2021-13-01"}, "download.inat.d1"),
        ({"d1": "2022-01-01", "d2": "2021-01-01"}, "download.inat.d1"),
        ({"max_rps": 0}, "download.inat.max_rps"),
        ({"api_url": "api.inaturalist.org"}, "download.inat.api_url"),
        ({"max_photos_per_species": 0}, "download.inat.max_photos_per_species"),
        ({"licence": ["cc0"]}, "download.inat.licence"),
    ],
)
def test_config_errors_name_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        from_dict(InatConfig, raw, prefix="download.inat")


def test_config_defaults_are_polite() -> None:
    cfg = from_dict(InatConfig, {"licenses": ["cc0"], "d1": "2020-01-01"}, prefix="download.inat")
    assert cfg.licenses == ("cc0",) and cfg.d1 == "2020-01-01"
    default = InatConfig()
    assert default.max_rps == 1.0 and default.daily_request_budget == 10_000
    assert default.licenses == ("cc0", "cc-by", "cc-by-nc") and default.photo_size == "medium"


@pytest.mark.parametrize(
    ("url", "size", "want"),
    [
        (
            "https://static.inaturalist.org/photos/92152429/square.jpg?1598551272",
            "medium",
            "https://static.inaturalist.org/photos/92152429/medium.jpg?1598551272",
        ),
        ("https://x.org/photos/1/square.JPEG", "large", "https://x.org/photos/1/large.JPEG"),
        ("https://x.org/photos/1/original.png?1", "small", "https://x.org/photos/1/small.png?1"),
    ],
)
def test_resize_url_replaces_the_size_word_only(url: str, size: str, want: str) -> None:
    assert resize_url(url, size) == want


def test_rate_limiter_spaces_requests_on_a_fake_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, clock=clock, sleep=clock.sleep)
    grants = [limiter.wait() for _ in range(5)]
    assert [b - a for a, b in zip(grants, grants[1:], strict=False)] == [0.5] * 4
    clock.t += 10  # idle for a while: the next request goes at once, no burst is saved up
    assert limiter.wait() == clock.t and clock.sleeps == [0.5] * 4
    limiter.wait()
    assert clock.sleeps[-1] == 0.5


def test_budget_windows_roll_over_with_the_utc_day_and_hour(tmp_path: Path) -> None:
    now = [1_700_000_000.0]  # 2023-11-14 22:13 UTC
    path = tmp_path / "budget.json"
    b = Budget(path, daily_requests=3, hourly_media_bytes=100, wall_clock=lambda: now[0])
    b.spend(requests=3, media_bytes=100)
    b.save()
    again = Budget(path, daily_requests=3, hourly_media_bytes=100, wall_clock=lambda: now[0])
    with pytest.raises(BudgetExhausted, match="after 00:00 UTC"):
        again.check(media=False)
    now[0] += 3600  # next hour, same day: media is allowed again, requests are not
    with pytest.raises(BudgetExhausted, match="daily request budget"):
        again.check(media=True)
    now[0] += 2 * 3600  # next day
    again.check(media=True)
    again.spend(media_bytes=100)
    with pytest.raises(
        BudgetExhausted, match="hourly media budget.*since 01:00 UTC.*after 02:00 UTC"
    ):
        again.check(media=True)


# ---------------------------------------------------------------------------------------------
# A clean run


def test_download_matches_the_servers_truth(fake: FakeInat, out: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    rows = download_inat(fast(fake), species(), out, seed=0)
    truth = fake.truth(NAMES)
    assert compared(rows) == truth
    ids = [r["photo_id"] for r in rows]
    assert len(ids) == len(set(ids))

    # Licences are checked per photo; subspecies count; the per-observation cap holds.
    assert {r["license"] for r in rows} == {"cc0", "cc-by", "cc-by-nc"}
    sub_obs = [o.id for o in fake.world.observations if o.taxon_id == 1011]
    assert any(int(r["observation_id"]) in sub_obs for r in rows)
    per_obs: dict[str, int] = {}
    for r in rows:
        per_obs[r["observation_id"]] = per_obs.get(r["observation_id"], 0) + 1
    assert max(per_obs.values()) == 3

    # Paging: id_above, never page numbers, several pages per species, the right filters.
    pages = fake.requests_to("observations")
    assert len([p for p in pages if p["query"]["taxon_id"] == "101"]) >= 3
    for p in pages:
        q = p["query"]
        assert "page" not in q and q["order_by"] == "id" and q["order"] == "asc"
        assert q["per_page"] == "200" and q["quality_grade"] == "research"
        assert q["photos"] == "true" and q["captive"] == "false"
    above = [int(p["query"]["id_above"]) for p in pages if p["query"]["taxon_id"] == "101"]
    assert above == sorted(above) and above[0] == 0

    # Every photo fetched once, at the asked size; the shared photo too.
    images = [r["path"] for r in fake.requests_to("image")]
    assert len(images) == len(set(images)) == len(rows)
    assert all("/medium." in p for p in images)

    # Files: in place, complete, described by the row; nothing half-written left.
    for r in rows:
        path = Path(r["path"])
        assert path.parts[:3] == ("data", "raw", "images") and path.is_file()
        assert sha256_file(path) == r["sha256"] and (r["width"], r["height"]) == (500, 375)
        assert path.suffix == Path(r["url"].split("?")[0]).suffix.lower()
    assert not list(out.rglob("*.part"))

    # The User-Agent names the project.
    assert all(r["user_agent"].startswith("snakeid/0.1.0 (") for r in fake.log)

    # What was resolved, and the synonym warning.
    resolved = json.loads((out / "taxa_resolved.json").read_text())["species"]
    assert [(t["name"], t["taxon_id"], t["matched_by"]) for t in resolved] == [
        ("Naja kaouthia", 101, "name"),
        ("Bungarus fasciatus", 102, "name"),
        ("Calliophis bivirgata", 104, "synonym"),
    ]
    assert "inactive; using its current synonym 104" in caplog.text

    # ATTRIBUTION.csv credits every photo, in manifest order.
    with open(out / "ATTRIBUTION.csv", newline="") as f:
        credits = list(csv.DictReader(f))
    assert [c["photo_id"] for c in credits] == ids
    by_licence = {c["license"]: c["license_url"] for c in credits}
    assert by_licence["cc-by"] == "https://creativecommons.org/licenses/by/4.0/"
    assert all(c["attribution"].startswith("(c) ") for c in credits)


def test_filters_and_caps_reach_the_api_and_the_choice(fake: FakeInat, out: Path) -> None:
    cfg = fast(
        fake,
        licenses=("cc0",),
        photo_size="small",
        d1="2019-02-01",
        max_photos_per_species=2,
        max_photos_per_observation=1,
    )
    rows = download_inat(cfg, species(), out, seed=0)
    assert compared(rows) == fake.truth(
        NAMES,
        licenses=("cc0",),
        photo_size="small",
        d1="2019-02-01",
        max_photos_per_species=2,
        max_photos_per_observation=1,
    )
    q = fake.requests_to("observations")[0]["query"]
    assert q["photo_license"] == "cc0" and q["d1"] == "2019-02-01" and "d2" not in q
    assert all(r["width"] == 240 for r in rows)


def test_unknown_and_ambiguous_names_fail_together(fake: FakeInat, out: Path) -> None:
    names = ["Naja kaouthia", "Fakeus nonexistus", "Homonymus duplex", "Naja naja"]
    with pytest.raises(TaxonResolutionError) as err:
        download_inat(fast(fake), species(names, Naja_naja=999), out, seed=0)
    msg = str(err.value)
    assert "3 species" in msg and "Fakeus nonexistus (not found)" in msg
    assert "Naja naja (inat_id 999 not found)" in msg
    assert "Homonymus duplex (ambiguous: 201" in msg and "202" in msg and "Plantae" in msg
    assert isinstance(err.value, UserError) and not fake.requests_to("image")


def test_ids_in_the_species_file_and_other_names_are_honoured(
    fake: FakeInat, out: Path, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING)
    names = ["Bungarus fasciatus", "Calliophis bivirgata", "Calliophis macclellandi"]
    sp = species(names, Bungarus_fasciatus=102, Calliophis_bivirgata=103)
    rows = download_inat(fast(fake), sp, out, seed=0)
    searched = [r["query"]["q"] for r in fake.requests_to("taxa")]
    assert searched == ["Calliophis macclellandi"]  # the other two came by id, in one call
    assert len(fake.requests_to("taxa_id")) == 2  # ids, then the inactive one's synonym
    resolved = json.loads((out / "taxa_resolved.json").read_text())["species"]
    assert [(t["taxon_id"], t["matched_by"]) for t in resolved] == [
        (102, "inat_id"),
        (104, "synonym"),
        (105, "other_name"),
    ]
    assert "lists this name under Sinomicrurus macclellandi" in caplog.text
    assert compared(rows) == fake.truth(names)


def test_rerun_fetches_only_what_is_missing(fake: FakeInat, out: Path) -> None:
    first = download_inat(fast(fake), species(), out, seed=0)
    n = len(fake.log)
    again = download_inat(fast(fake), species(), out, seed=0)
    assert again == first
    assert all(r["kind"] in ("taxa", "taxa_id") for r in fake.log[n:])  # names only

    # A damaged file and a deleted one are fetched again; nothing else is.
    Path(first[0]["path"]).write_bytes(b"garbage")
    Path(first[5]["path"]).unlink()
    n = len(fake.log)
    assert download_inat(fast(fake), species(), out, seed=0) == first
    refetched = sorted(r["path"].split("/")[3] for r in fake.log[n:] if r["kind"] == "image")
    assert refetched == sorted([first[0]["photo_id"], first[5]["photo_id"]])


def test_raising_and_lowering_caps(fake: FakeInat, out: Path) -> None:
    def run(cap: int) -> list[dict[str, Any]]:
        rows = download_inat(fast(fake, max_photos_per_species=cap), species(), out, seed=0)
        assert compared(rows) == fake.truth(NAMES, max_photos_per_species=cap)
        return rows

    run(2)
    n = len(fake.log)
    rows = run(5)
    assert len([r for r in fake.log[n:] if r["kind"] == "image"]) == 3 * 3  # only the new ones
    run(1)
    on_disk = sorted(str(p) for p in (out / "images").rglob("*") if p.is_file())
    assert len(on_disk) == 3  # the surplus is gone: the folder is the manifest
    assert set(on_disk) <= {r["path"] for r in rows}


def test_a_photo_gone_for_good_is_skipped_and_replaced(out: Path, caplog: Any) -> None:
    world = small_world()
    gone = world.observations[0].photos[0].id
    with FakeInat(world, max_per_page=3, gone_photos=[gone]) as fake:
        rows = download_inat(fast(fake, max_photos_per_species=4), species(), out, seed=0)
        assert compared(rows) == fake.truth(NAMES, max_photos_per_species=4)
        assert f"photo {gone} skipped (HTTP 404)" in caplog.text
        rows = download_inat(fast(fake, max_photos_per_species=4), species(), out, seed=0)
        assert compared(rows) == fake.truth(NAMES, max_photos_per_species=4)


# ---------------------------------------------------------------------------------------------
# Faults


@pytest.mark.parametrize(
    "kind", ["429", "500", "502", "503", "reset", "truncate", "truncate_nolength"]
)
def test_each_fault_is_retried(fake: FakeInat, out: Path, kind: str) -> None:
    for target in ("taxa", "observations", "image"):
        fake.fail_next(kind, n=2, target=target)
    rows = download_inat(fast(fake), species(), out, seed=0)
    assert compared(rows) == fake.truth(NAMES)
    faulted = [r["kind"] for r in fake.log if r["fault"] == kind]
    assert faulted == ["taxa"] * 2 + ["observations"] * 2 + ["image"] * 2
    assert not list(out.rglob("*.part"))


def test_a_429_burst_then_success_and_a_stalled_answer(fake: FakeInat, out: Path) -> None:
    fake.stall_s = 1.0
    fake.fail_next("429", n=5, target="any")
    fake.fail_next("stall", n=1, target="image")
    rows = download_inat(fast(fake, timeout_s=0.3), species(), out, seed=0)
    assert compared(rows) == fake.truth(NAMES)
    assert [r["fault"] for r in fake.log[:5]] == ["429"] * 5


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_faults_still_end_at_the_truth(out: Path, seed: int) -> None:
    world = World.random(NAMES, seed=seed, obs_per_species=(6, 12), inactive=[NAMES[2]])
    kinds = [k for k in RANDOM_FAULT_KINDS if k != "429_retry_after"]  # no real 1 s waits
    with FakeInat(world, max_per_page=4, fault_rate=0.3, fault_kinds=kinds, seed=seed) as fake:
        rows = download_inat(fast(fake, max_retries=12), species(), out, seed=seed)
        assert compared(rows) == fake.truth(NAMES)
        assert sum(r["fault"] is not None for r in fake.log) > 5
    assert not list(out.rglob("*.part"))


def test_retry_after_backoff_and_jitter_on_a_fake_clock(fake: FakeInat, tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = fast(fake, backoff_base_s=1.0, max_rps=1.0)
    http = InatSession(cfg, tmp_path / "budget.json", clock=clock, sleep=clock.sleep)
    fake.fail_next("429_retry_after", target="api")  # Retry-After: 1
    fake.fail_next("429", n=3, target="api")
    assert http.get_json("taxa", {"q": "Naja"})["results"]
    assert len(fake.log) == 5
    # Retry k waits backoff_base_s * 2**k * [0.5, 1.5), and at least what Retry-After said; the
    # limiter (1/s) never has to add a wait on top of that.
    d = clock.sleeps
    assert len(d) == 4 and 1.0 <= d[0] < 1.5
    assert all(2**k * 0.5 <= d[k] < 2**k * 1.5 for k in (1, 2, 3))
    assert len({d[k] / 2**k for k in (1, 2, 3)}) == 3  # jittered


def test_giving_up_says_how_to_resume(fake: FakeInat, out: Path) -> None:
    fake.fail_next("503", n=10, target="observations")
    with pytest.raises(InatError, match="still failing after 3 attempts.*run again to resume"):
        download_inat(fast(fake, max_retries=2), species(), out, seed=0)


def test_unreachable_api_fails_fast_with_one_clear_message(out: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = InatConfig(api_url=f"http://127.0.0.1:{port}/v1", max_rps=10.0, backoff_base_s=2.0)
    t = time.monotonic()
    with pytest.raises(InatUnreachable) as err:
        download_inat(cfg, species(), out, seed=0)
    assert time.monotonic() - t < 5
    msg = str(err.value)
    assert f"cannot reach the iNaturalist API at http://127.0.0.1:{port}/v1" in msg
    assert "download.source: demo" in msg and "download.source: folder" in msg


# ---------------------------------------------------------------------------------------------
# Politeness and budgets


def test_default_politeness_paces_api_and_images_together(fake: FakeInat, out: Path) -> None:
    clock = FakeClock()
    cfg = InatConfig(api_url=fake.api_url)  # max_rps 1: pretend-wait instead of waiting
    http = InatSession(cfg, out / ".inat_state" / "budget.json", clock=clock, sleep=clock.sleep)
    grants: list[float] = []
    wait = http.limiter.wait
    http.limiter.wait = lambda: grants.append(wait()) or grants[-1]  # type: ignore[method-assign]
    t = time.monotonic()
    rows = download_inat(cfg, species(), out, seed=0, session=http)
    assert compared(rows) == fake.truth(NAMES)
    assert len(grants) == len(fake.log) > 30  # API and images through one limiter
    assert min(b - a for a, b in zip(grants, grants[1:], strict=False)) >= 1.0
    assert time.monotonic() - t < 10  # and no real second was waited per request


def test_daily_budget_stops_cleanly_and_a_rerun_resumes(fake: FakeInat, out: Path) -> None:
    with pytest.raises(BudgetExhausted, match="daily request budget.*resumes where it stopped"):
        download_inat(fast(fake, daily_request_budget=12), species(), out, seed=0)
    assert len(fake.log) == 12
    with pytest.raises(BudgetExhausted):  # same day: what was spent still counts
        download_inat(fast(fake, daily_request_budget=12), species(), out, seed=0)
    assert len(fake.log) == 12
    rows = download_inat(fast(fake, daily_request_budget=500), species(), out, seed=0)
    assert compared(rows) == fake.truth(NAMES)
    images = [r["path"] for r in fake.requests_to("image")]
    assert len(images) == len(set(images))  # nothing fetched twice


def test_media_budget_stops_cleanly_and_a_rerun_resumes(fake: FakeInat, out: Path) -> None:
    with pytest.raises(BudgetExhausted, match="hourly media budget.*UTC"):
        download_inat(fast(fake, hourly_media_bytes_budget=60_000), species(), out, seed=0)
    fetched = len(fake.requests_to("image"))
    assert 0 < fetched < len(fake.truth(NAMES))
    rows = download_inat(fast(fake), species(), out, seed=0)
    assert compared(rows) == fake.truth(NAMES)
    assert len(fake.requests_to("image")) == len(rows)


def test_photo_ext_is_kept(out: Path) -> None:
    w = World()
    w.species("Naja kaouthia", 101)
    w.observe(101, [Photo(9, "cc0", "png"), Photo(8, "cc-by", "jpeg")])
    with FakeInat(w) as fake:
        rows = download_inat(fast(fake), species(["Naja kaouthia"]), out, seed=0)
    assert [Path(r["path"]).name for r in rows] == ["9.png", "8.jpeg"]


def test_split_keeps_each_observations_photos_together(out: Path) -> None:
    from snakeid.data.split import SplitConfig, assign_splits

    world = World.random(NAMES, seed=5, obs_per_species=(12, 20))
    with FakeInat(world) as fake:
        rows = download_inat(fast(fake, max_photos_per_observation=None), species(), out, seed=0)
    as_read = [{k: str(v) for k, v in r.items()} for r in rows]  # as the CSV gives them back
    result = assign_splits(as_read, species(), SplitConfig(), seed=0)
    split_of: dict[str, set[str]] = {}
    for name, part in result.splits.items():
        for r in part:
            split_of.setdefault(r["observation_id"], set()).add(name)
    assert max(len(s) for s in split_of.values()) == 1
    assert max(Counter(r["observation_id"] for r in rows).values()) > 1  # the test means something
