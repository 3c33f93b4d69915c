"""The report's HTML as a reader gets it (#26): the headline, the summary, a chart per view with
its limit, nothing that loads from elsewhere, every string escaped, any document drawn."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import pytest

from batchrun.report.html import render
from tests.helpers.report_docs import (
    SENTENCE,
    START,
    long_job,
    row,
    short_job,
    showcase,
    with_job,
)

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '/data/<script>alert("x")</script> & \'q\'.jsonl'


class Page(HTMLParser):
    """Every tag with its attributes, and the text a reader sees (outside style and title)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.words: list[str] = []
        self.styles: list[str] = []
        self._in: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        self._in.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        while self._in and self._in.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self._in and self._in[-1] == "style":
            self.styles.append(data)
        elif data.strip():
            self.words.append(data.strip())

    @property
    def text(self) -> str:
        return " ".join(self.words)


def svgs(page: str) -> list[ET.Element]:
    """Each inline SVG, parsed as the XML it must be."""
    # S314: the XML is our own output, parsed to prove it is well-formed.
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, re.S)]  # noqa: S314


def svg_text(svg: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in svg.iter(f"{SVG}text")]


def titles(page: str) -> list[str]:
    return [svg.findtext(f"{SVG}title") or "" for svg in svgs(page)]


def test_the_headline_is_the_sentence_of_where_the_time_went() -> None:
    page = Page(render(short_job()))

    assert "Where the time went " + SENTENCE in page.text
    assert "paced at the TPM limit: 71 % (3 min 33 s)" in page.text


def test_the_summary_shows_the_numbers_with_thousands_separators() -> None:
    text = Page(render(short_job())).text

    for shown in ("Requests 2,400", "Answered by the server 2,400", "Failed 0",
                  "429 answers 30 (per-minute limit 30, daily limit 0, too large 0)",
                  "Tokens billed 456,000", "Tokens charged against the limits 540,000",
                  "Wall-clock time 5 min", "Cost $0.0123 at list prices of 2026-11-01",
                  "Limits of gpt-4o-mini 500 RPM, 200,000 TPM, 10,000 RPD"):
        assert shown in text


def test_huge_numbers_get_separators() -> None:
    doc = short_job()
    doc["summary"]["tokens"] = 98_765_432_109

    assert "Tokens billed 98,765,432,109" in Page(render(doc)).text


def test_each_chart_is_an_svg_with_its_title() -> None:
    page = render(short_job())

    assert titles(page) == ["where the time went", "Sessions", "Requests per minute",
                            "Tokens per minute", "429 answers per minute", "Requests in flight",
                            "Daily requests used"]


def test_the_limits_are_drawn_as_labelled_lines() -> None:
    charts = dict(zip(titles(page := render(short_job())), svgs(page), strict=True))

    assert "limit 500 RPM" in svg_text(charts["Requests per minute"])
    assert "limit 200,000 TPM" in svg_text(charts["Tokens per minute"])
    assert "limit 10,000 RPD" in svg_text(charts["Daily requests used"])


def test_the_rate_is_drawn_per_minute_against_the_limit() -> None:
    """8 requests a second is 480 a minute: the y axis reaches past the 500 limit, not 8."""
    charts = dict(zip(titles(page := render(short_job())), svgs(page), strict=True))

    labels = svg_text(charts["Requests per minute"])
    assert "600" in labels and "8" not in labels


def test_a_hostile_path_and_names_are_escaped_everywhere() -> None:
    doc = with_job(long_job(requests=20_000, days=1), output=HOSTILE, input=HOSTILE,
                   id='<img src=x onerror="alert(1)">')
    doc["by"]["model"] = {'<b>m&"': doc["by"]["model"]["gpt-4o"], "m2": []}
    doc["by"]["endpoint"] = {"<east>": doc["by"]["endpoint"]["east"]}
    doc["time"][0]["what"] = "<i>paced</i>"
    doc["sentence"] = "</p><script>x()</script>"
    page = render(doc)

    assert "<script" not in page.lower()
    assert "<img" not in page.lower() and "<b>" not in page and "<east>" not in page
    text = Page(page).text
    for shown in (HOSTILE, '<img src=x onerror="alert(1)">', '<b>m&"', "<east>",
                  "</p><script>x()</script>"):
        assert shown in text
    assert all(svg is not None for svg in svgs(page))  # every SVG still parses as XML


def test_nothing_in_the_page_loads_from_anywhere() -> None:
    page = Page(render(long_job(requests=50_000, days=1)))

    assert {tag for tag, _ in page.tags}.isdisjoint(
        {"script", "link", "img", "iframe", "object", "embed", "image", "use", "base",
         "audio", "video", "source", "form", "meta-refresh"})
    for tag, attrs in page.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            if name == "xmlns":  # the SVG namespace: a name, never fetched
                assert value == "http://www.w3.org/2000/svg"
                continue
            assert name not in ("src", "href", "srcset", "xlink:href", "action", "poster"), tag
            assert "url(" not in (value or "") and "//" not in (value or ""), (tag, name, value)
    assert not any("url(" in css or "@import" in css or "@font-face" in css
                   for css in page.styles)


def test_the_page_prints_landscape_without_cutting_a_chart() -> None:
    css = " ".join(Page(render(short_job())).styles)

    assert "@page { size: landscape;" in css
    assert "figure { margin: 0 0 18px; break-inside: avoid;" in css
    assert "svg.chart, svg.share { display: block; width: 100%;" in css


@pytest.mark.parametrize("doc", [
    {},
    {"version": 1, "job": {}, "series": [], "sessions": [], "by": {}, "batch_parts": [],
     "summary": {}, "time": [], "sentence": ""},
    {"job": {"limits": {"m": {"rpm": 10}}}, "series": [row(START, sent=1, ok=1)],
     "sessions": [{"start": START, "end": START}]},
    {"job": None, "series": [{"t": "x"}, 5, row(START)], "by": {"model": {"m": "bad"}},
     "batch_parts": [{"states": [{"state": "validating"}]}], "sessions": [{"end": 3}],
     "time": [{"what": "x"}], "summary": {"requests": "many"}},
], ids=["nothing", "empty", "one-second", "odd-fields"])
def test_any_document_is_drawn_without_error(doc: dict[str, Any]) -> None:
    page = render(doc)

    assert page.startswith("<!doctype html>")
    assert len(svgs(page)) >= 4
    assert "Where the time went" in Page(page).text


def test_an_unlimited_limiter_draws_no_rate_line() -> None:
    """A limiter without a TPM limit reports its rate as 0: drawn, it would read as a limit of
    nothing along the bottom of the chart."""
    doc = short_job()
    for r in doc["series"]:
        r["rate_tpm"] = 0.0
    charts = dict(zip(titles(page := render(doc)), svgs(page), strict=True))

    assert "limiter's rate" not in svg_text(charts["Tokens per minute"])
    assert "limiter's rate" in svg_text(charts["Requests per minute"])


def test_an_empty_series_says_nothing_was_recorded() -> None:
    doc = short_job()
    doc["series"] = []
    charts = dict(zip(titles(page := render(doc)), svgs(page), strict=True))

    assert "nothing recorded" in svg_text(charts["Requests per minute"])
    assert "limit 500 RPM" in svg_text(charts["Requests per minute"])


def test_a_job_without_429s_says_so() -> None:
    doc = short_job()
    for r in doc["series"]:
        r.update(rate_limited=0, rate_limited_minute=0)
    charts = dict(zip(titles(page := render(doc)), svgs(page), strict=True))

    assert "no 429 answers" in svg_text(charts["429 answers per minute"])


def test_sessions_are_bands_and_a_killed_one_is_marked() -> None:
    charts = dict(zip(titles(page := render(long_job())), svgs(page), strict=True))

    lanes = svg_text(charts["Sessions and Batch API parts"])
    assert {"1 · killed", "✕ killed", "2 · done", "part 1", "part 2"} <= set(lanes)
    assert lanes.count("✓ completed") == 2


def test_a_session_that_stopped_on_its_own_is_not_marked_killed() -> None:
    doc = short_job()
    doc["sessions"] = [{"start": START, "end": START + 100, "ended": "daily limit"},
                       {"start": START + 160, "end": START + 300, "ended": "done"}]
    charts = dict(zip(titles(page := render(doc)), svgs(page), strict=True))

    lanes = svg_text(charts["Sessions"])
    assert {"1 · daily limit", "2 · done", "stopped early", "done"} <= set(lanes)
    assert "✕ killed" not in lanes and "killed" not in lanes


def test_a_break_between_two_sessions_says_the_job_was_not_running() -> None:
    """The showcase job is killed at 08:10 and resumed at 08:40, and waits 14 hours for its
    next day from 09:58."""
    charts = dict(zip(titles(page := render(showcase())), svgs(page), strict=True))

    labels = svg_text(charts["Requests per minute"])
    assert [t for t in labels if t.endswith(("idle", "running"))] == [
        "30 min not running", "14 h 2 min idle"]


def test_several_models_and_endpoints_get_a_chart_each_with_their_own_limits() -> None:
    charts = dict(zip(titles(page := render(long_job())), svgs(page), strict=True))

    assert "limit 1,000 RPM" in svg_text(charts["gpt-4o-mini: requests per minute"])
    assert "limit 500 RPM" in svg_text(charts["gpt-4o: requests per minute"])
    assert "limit 100,000 TPM" in svg_text(charts["gpt-4o: tokens per minute"])
    assert {"east: requests and 429s per minute", "west: requests and 429s per minute"} <= set(
        charts)
    # With two models no single limit applies to the whole job's chart.
    assert not any(t.startswith("limit ") for t in svg_text(charts["Requests per minute"]))


def test_nights_waiting_for_the_daily_reset_are_drawn_as_labelled_breaks() -> None:
    """The 1M-request job works about 9 hours a day: its nights are narrow breaks that say how
    long they lasted, and the time axis reads in UTC with the day on it."""
    charts = dict(zip(titles(page := render(long_job())), svgs(page), strict=True))

    labels = svg_text(charts["Requests per minute"])
    assert [t for t in labels if t.endswith("idle")] == [
        "50 min idle", "1 h 50 min idle", "14 h 33 min idle"]
    assert {"Dec 6 06:00", "Dec 7 00:00", "Dec 8 00:00", "time (UTC)"} <= set(labels)


def test_a_three_day_million_request_job_stays_small() -> None:
    doc = long_job()
    assert doc["summary"]["requests"] >= 1_000_000
    page = render(doc)

    assert len(page.encode()) < 150_000
    for svg in svgs(page):
        for path in svg.iter(f"{SVG}path"):
            # One H per bucket at most: never more than ~1,500 points a line.
            assert path.get("d", "").count("H") <= 1_500
