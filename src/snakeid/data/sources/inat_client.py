"""HTTP for the iNaturalist source: one polite session for API calls and photo downloads alike.

Everything goes through `InatSession`, so API requests and image requests share one rate limiter,
one retry policy and one set of budgets:

- `RateLimiter` (in `inat_pacing`) spaces requests at least `1 / max_rps` seconds apart (no bursts);
- 429, 5xx, timeouts, connection errors and bodies cut short are retried with exponential backoff
  and jitter (`Retry-After` is honoured when the server sends one; iNaturalist rarely does);
- `Budget` counts requests per UTC day and photo bytes per UTC hour in a JSON file, so a rerun in
  the same day or hour counts what the interrupted run already spent (iNaturalist blocks clients
  above about 10,000 requests a day or 5 GB of media an hour).

Clock and sleep are injectable so tests check the timing without waiting in real time.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import requests
import urllib3

from snakeid import __version__
from snakeid.data.sources.inat_config import InatConfig
from snakeid.data.sources.inat_pacing import RateLimiter
from snakeid.errors import UserError

_logger = logging.getLogger(__name__)

T = TypeVar("T")

_QUICK_RETRIES = 2  # before the API has answered once: fail fast when offline
_QUICK_BACKOFF_S = 0.25
_MAX_BACKOFF_S = 120.0
_MAX_RETRY_AFTER_S = 900.0
_CHUNK = 1 << 16
# A photo answered so is deleted or hidden: skip it (any other 4xx is retried, then fatal).
_GONE_STATUS = frozenset({403, 404, 410, 451})


class InatError(UserError):
    """iNaturalist failed in a way the user can act on (rerun, wait, fix a parameter)."""


class InatUnreachable(InatError):
    """The API never answered: offline, wrong `api_url`, DNS or firewall."""


class BudgetExhausted(InatError):
    """The daily request or hourly media budget is spent; a later rerun resumes."""


class PhotoGone(Exception):
    """A photo URL answered with a 4xx: the photo was deleted or hidden, retrying will not help."""


class BadContent(Exception):
    """A downloaded body is not what it should be (e.g. not a decodable image); worth a retry."""


class _Transient(Exception):
    """A failure worth retrying. `no_connection`: not even a TCP connection was made."""

    def __init__(self, reason: str, retry_after: float | None = None, no_connection: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.no_connection = no_connection


def user_agent(contact: str | None) -> str:
    """`snakeid/<version> (...)`: iNaturalist asks API clients to name themselves."""
    about = "snake species classifier; downloads research-grade photos"
    if contact:
        about += f"; contact: {contact}"
    return f"snakeid/{__version__} ({about}) python-requests/{requests.__version__}"


class Budget:
    """Requests per UTC day and media bytes per UTC hour, persisted about once a second.

    A killed run may forget its last second of spending: at most a few requests.
    """

    def __init__(
        self,
        path: Path,
        *,
        daily_requests: int,
        hourly_media_bytes: int,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.path = path
        self.daily_requests = daily_requests
        self.hourly_media_bytes = hourly_media_bytes
        self._wall_clock = wall_clock
        self._saved_at = float("-inf")
        self.day, self.requests, self.hour, self.media_bytes = "", 0, "", 0
        try:
            with open(path) as f:
                saved = json.load(f)
            self.day, self.requests = str(saved["day"]), int(saved["requests"])
            self.hour, self.media_bytes = str(saved["hour"]), int(saved["media_bytes"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError):
            _logger.warning("%s is unreadable; counting the request budget from zero", path)
        self._roll()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._wall_clock(), UTC)

    def _roll(self) -> None:
        now = self._now()
        day, hour = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m-%dT%H")
        if day != self.day:
            self.day, self.requests = day, 0
        if hour != self.hour:
            self.hour, self.media_bytes = hour, 0

    def check(self, *, media: bool) -> None:
        """Raise `BudgetExhausted` if the next request (an image one if `media`) is over budget."""
        self._roll()
        if self.requests >= self.daily_requests:
            raise BudgetExhausted(
                f"daily request budget spent: {self.requests} requests on {self.day} (UTC), "
                f"download.inat.daily_request_budget is {self.daily_requests}. Everything "
                "fetched so far is kept; run `dvc repro` again after 00:00 UTC (or raise the "
                "budget) and the download resumes where it stopped"
            )
        if media and self.media_bytes >= self.hourly_media_bytes:
            next_hour = self._now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            raise BudgetExhausted(
                f"hourly media budget spent: {self.media_bytes / 1e6:.1f} MB of photos since "
                f"{self.hour[-2:]}:00 UTC, download.inat.hourly_media_bytes_budget is "
                f"{self.hourly_media_bytes}. Everything fetched so far is kept; run `dvc repro` "
                f"again after {next_hour:%H:%M} UTC and the download resumes where it stopped"
            )

    def spend(self, *, requests: int = 0, media_bytes: int = 0) -> None:
        self._roll()
        self.requests += requests
        self.media_bytes += media_bytes

    def save(self, *, force: bool = True) -> None:
        now = self._wall_clock()
        if not force and now - self._saved_at < 1.0:
            return
        self._saved_at = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        state = {
            "day": self.day,
            "requests": self.requests,
            "hour": self.hour,
            "media_bytes": self.media_bytes,
        }
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.path)


class InatSession:
    """All HTTP of one download: API JSON and photo files, rate-limited, retried, budgeted."""

    def __init__(
        self,
        cfg: InatConfig,
        budget_path: Path,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.cfg = cfg
        self.api_url = cfg.api_url.rstrip("/")
        self.limiter = RateLimiter(cfg.max_rps, clock=clock, sleep=sleep)
        self.budget = Budget(
            budget_path,
            daily_requests=cfg.daily_request_budget,
            hourly_media_bytes=cfg.hourly_media_bytes_budget,
            wall_clock=wall_clock,
        )
        self._sleep = sleep
        self._rng = random.Random(seed)  # jitter only; what is downloaded never depends on it
        self._http = requests.Session()
        self._http.headers["User-Agent"] = user_agent(cfg.contact)
        self._reached = False  # has the server answered at all (even with an error)?
        self.requests = 0
        self.media_bytes = 0
        self.throttled = 0

    def close(self) -> None:
        self.budget.save()
        self._http.close()

    def __enter__(self) -> InatSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public calls --------------------------------------------------------------------------

    def get_json(
        self, path: str, params: Mapping[str, Any] | None = None, *, missing_ok: bool = False
    ) -> dict[str, Any]:
        """GET `<api_url>/<path>` and return the decoded JSON object (`{}` for a 404 if
        `missing_ok`)."""
        url = f"{self.api_url}/{path.lstrip('/')}"

        def once() -> dict[str, Any]:
            resp = self._send(url, params, media=False, stream=False)
            if resp.status_code == 404 and missing_ok:
                return {}
            if resp.status_code != 200:
                raise InatError(
                    f"iNaturalist answered HTTP {resp.status_code} to {resp.url}: "
                    f"{resp.text[:200]!r}"
                )
            try:
                data = resp.json()
            except ValueError:  # a body cut short without a Content-Length to notice it by
                raise _Transient("the JSON answer was incomplete") from None
            if not isinstance(data, dict):
                raise _Transient("the JSON answer was not an object")
            return data

        return self._retrying(f"GET {url}", once)

    def download(self, url: str, dest: Path, validate: Callable[[Path], T]) -> tuple[int, T]:
        """Stream `url` into `dest` and check it; returns (bytes, what `validate` returned).

        The body must match its Content-Length and pass `validate` (raising `BadContent`), else
        the download is retried. 403, 404, 410 or 451 raise `PhotoGone` at once.
        """

        def once() -> tuple[int, T]:
            resp = self._send(url, None, media=True, stream=True)
            with resp:
                if resp.status_code in _GONE_STATUS:
                    raise PhotoGone(f"HTTP {resp.status_code}")
                if resp.status_code != 200:
                    raise _Transient(f"HTTP {resp.status_code}")
                expected = resp.headers.get("Content-Length")
                encoded = resp.headers.get("Content-Encoding", "identity") != "identity"
                n = 0
                try:
                    with open(dest, "wb") as f:
                        for chunk in resp.iter_content(_CHUNK):
                            f.write(chunk)
                            n += len(chunk)
                except requests.RequestException as e:
                    raise _Transient(f"download broke off after {n} bytes ({_short(e)})") from None
                finally:
                    self.media_bytes += n
                    self.budget.spend(media_bytes=n)
                    self.budget.save(force=False)
            if expected is not None and not encoded and expected.isdigit() and n != int(expected):
                raise _Transient(f"got {n} of {expected} bytes")
            try:
                return n, validate(dest)
            except BadContent as e:
                raise _Transient(f"not a valid image ({e})") from None

        return self._retrying(f"GET {url}", once)

    # -- internals -----------------------------------------------------------------------------

    def _send(
        self, url: str, params: Mapping[str, Any] | None, *, media: bool, stream: bool
    ) -> requests.Response:
        """One request through the limiter and the budget; throttling and 5xx raise `_Transient`."""
        self.budget.check(media=media)
        self.limiter.wait()
        timeout = (min(10.0, self.cfg.timeout_s), self.cfg.timeout_s)
        headers = {"Accept-Encoding": "identity"} if media else None
        try:
            resp = self._http.get(
                url, params=params, timeout=timeout, stream=stream, headers=headers
            )
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
        ) as e:
            raise InatError(f"bad URL {url!r}: {e}") from None
        except requests.RequestException as e:  # refused, DNS, timeout, reset, body cut short
            raise _Transient(_short(e), no_connection=_no_connection(e)) from None
        finally:
            self.requests += 1
            self.budget.spend(requests=1)
            self.budget.save(force=False)
        self._reached = True
        if resp.status_code == 429 or resp.status_code >= 500:
            retry_after = _retry_after(resp.headers.get("Retry-After"))
            resp.close()
            if resp.status_code == 429:
                self.throttled += 1
                if self.throttled == 1:  # once: the retries below are logged anyway
                    _logger.warning(
                        "iNaturalist is throttling this client (HTTP 429); backing off. If it "
                        "keeps happening, lower download.inat.max_rps"
                    )
            raise _Transient(f"HTTP {resp.status_code}", retry_after)
        return resp

    def _retrying(self, what: str, once: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return once()
            except _Transient as e:
                offline = e.no_connection and not self._reached
                limit = _QUICK_RETRIES if offline else self.cfg.max_retries
                if attempt >= limit:
                    if offline:
                        raise InatUnreachable(
                            f"cannot reach the iNaturalist API at {self.api_url} ({e.reason}). "
                            "Check the network and download.inat.api_url; to work offline use "
                            "download.source: demo (synthetic photos) or download.source: "
                            "folder (your own photos)"
                        ) from None
                    raise InatError(
                        f"{what} still failing after {attempt + 1} attempts ({e.reason}). "
                        "Everything fetched so far is kept; run again to resume"
                    ) from None
                delay = self._backoff(attempt, e.retry_after, quick=offline)
                _logger.info("%s: %s; retry %d in %.1f s", what, e.reason, attempt + 1, delay)
                self._sleep(delay)
                attempt += 1

    def _backoff(self, attempt: int, retry_after: float | None, *, quick: bool) -> float:
        base = self.cfg.backoff_base_s
        if quick:
            base = min(base, _QUICK_BACKOFF_S)
        # Jitter in [0.5, 1.5) so many clients throttled together do not come back together.
        delay = min(_MAX_BACKOFF_S, base * 2**attempt) * (0.5 + self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, _MAX_RETRY_AFTER_S))
        return delay


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _no_connection(e: requests.RequestException) -> bool:
    """True when no TCP connection was made (refused, DNS failure, connect timeout)."""
    if isinstance(e, requests.ConnectTimeout):
        return True
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return isinstance(
        reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
    )


def _short(e: BaseException) -> str:
    """The useful part of a requests error: "Failed to resolve 'host' (...)", not the pool."""
    reason = getattr(e.args[0], "reason", None) if e.args else None
    text = str(reason or e)
    if "): " in text and text.startswith("HTTP"):  # "HTTPSConnection(host=..., port=443): ..."
        text = text.split("): ", 1)[1]
    return text if len(text) <= 200 else text[:197] + "..."
