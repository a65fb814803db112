"""The airlock's rules (fedcare.governance.airlock): the small-cell check finds every count
between 1 and the threshold and nothing else, models without DP are flagged, and the request's
state machine lets nothing out without the quorum (any rejection, a site outside the study or
a second decision of a site are refused)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.governance.airlock import (
    DEFAULT_MIN_CELL,
    AirlockError,
    ArtifactKind,
    Decision,
    ExportConflict,
    ExportForbidden,
    ExportStatus,
    artifact_kind,
    decide,
    downloadable,
    opened,
    quorum_of,
    run_checks,
    small_cells_csv,
    small_cells_json,
    strictest_min_cell,
)

NOW = datetime(2026, 12, 5, tzinfo=UTC)
counts = st.integers(min_value=0, max_value=10**6)
thresholds = st.integers(min_value=1, max_value=1000)


def _csv(rows: list[list[int]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["group", *[f"c{i}" for i in range(len(rows[0]) if rows else 0)]])
    for i, row in enumerate(rows):
        writer.writerow([f"group {chr(97 + i % 26)}", *row])
    return out.getvalue()


@given(st.lists(st.lists(counts, min_size=1, max_size=5), min_size=1, max_size=8)
       .filter(lambda rows: len({len(r) for r in rows}) == 1), thresholds)
def test_a_csv_table_has_exactly_its_small_counts_found(rows: list[list[int]],
                                                        min_cell: int) -> None:
    small = sum(0 < n < min_cell for row in rows for n in row)
    found = small_cells_csv(_csv(rows), min_cell)
    assert len(found) == small
    result = run_checks("counts.csv", _csv(rows).encode(), min_cell=min_cell, dp=True)
    assert result.refused == (small > 0)


@given(st.recursive(counts | st.floats(allow_nan=False) | st.booleans() | st.text(max_size=3),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["n", "rows", "deaths", "x"]), inner,
                                      max_size=4), max_leaves=30), thresholds)
def test_every_small_integer_of_a_json_table_is_found(doc: object, min_cell: int) -> None:
    def small(x: object) -> int:
        if isinstance(x, dict):
            return sum(small(v) for v in x.values())
        if isinstance(x, list):
            return sum(small(v) for v in x)
        return int(isinstance(x, int) and not isinstance(x, bool) and 0 < x < min_cell)

    assert len(small_cells_json(doc, min_cell)) == small(doc)


@given(st.integers(min_value=1, max_value=DEFAULT_MIN_CELL - 1))
def test_one_small_cell_anywhere_refuses_and_names_where_not_what(n: int) -> None:
    doc = {"config": {"study": {"seed": 3}}, "rounds": [{"round": 1}],
           "sites": [{"name": "alpha", "train_rows": 840},
                     {"name": "beta", "deaths_by_age": {"80+": n, "70-79": 0}}]}
    result = run_checks("table.json", json.dumps(doc).encode(), min_cell=10, dp=True)
    assert result.refused and result.kind is ArtifactKind.TABLE
    (message,) = result.refusals
    assert "$.sites[1].deaths_by_age.80+" in message and "below the sites' small-cell" in message
    assert f"= {n}" not in message  # the requester does not learn the small count


def test_settings_bookkeeping_and_zeros_are_not_small_cells() -> None:
    doc = {"config": {"train": {"batch_size": 4}}, "round": 2, "seed": 1, "parameters": 9,
           "rows": [{"round": 3, "bytes_up": 5, "n": 0, "accuracy": 0.5, "ok": True}]}
    assert small_cells_json(doc, 10) == []


def test_an_unreadable_table_is_refused_not_passed() -> None:
    for name, data in (("t.json", b"{not json"), ("t.csv", b"\xff\xfe"),
                       ("t.json", b"\x80")):
        assert run_checks(name, data, min_cell=10, dp=True).refused


def test_a_model_without_dp_is_flagged_not_refused() -> None:
    plain = run_checks("model.safetensors", b"\0" * 8, min_cell=10, dp=False)
    assert not plain.refused and "without differential privacy" in plain.flags[0]
    assert run_checks("model.safetensors", b"\0", min_cell=10, dp=True).flags == ()


def test_a_report_is_flagged_and_checked_through_the_table_it_shows() -> None:
    bad = run_checks("report.html", b"<html>", min_cell=10, dp=True,
                     source=("history.json", b'{"n": 3}'))
    assert bad.refused and "history.json (what report.html shows)" in bad.refusals[0]
    good = run_checks("report.html", b"<html>", min_cell=10, dp=True,
                      source=("history.json", b'{"n": 30}'))
    assert not good.refused and "not checked automatically" in good.flags[0]
    assert run_checks("report.html", b"<html>", min_cell=10, dp=True).refused  # no source


def test_unknown_kinds_of_file_are_refused() -> None:
    with pytest.raises(AirlockError, match="not a kind of file"):
        artifact_kind("data.parquet")
    assert artifact_kind("model.xgb.json") is ArtifactKind.MODEL


@given(st.lists(st.one_of(st.integers(-5, 2000), st.none(), st.text(max_size=2),
                          st.booleans())))
def test_the_threshold_is_the_strictest_known_never_below_the_default(given_: list) -> None:
    got = strictest_min_cell(given_)
    valid = [t for t in given_ if isinstance(t, int) and not isinstance(t, bool)
             and 1 <= t <= 10**6]
    assert got == max([DEFAULT_MIN_CELL, *valid])


# -- the state machine --------------------------------------------------------------------
def _awaiting(sites: tuple[str, ...] = ("a", "b", "c"), quorum: int | None = None):
    check = run_checks("t.csv", b"n\n40\n", min_cell=10, dp=True)
    return opened(check, sites, quorum_of(quorum, sites))


def _d(site: str, approve: bool = True, reason: str = "fine") -> Decision:
    return Decision(site, f"steward-{site}", approve, reason, NOW)


def test_by_default_every_site_must_approve() -> None:
    state = _awaiting()
    for site in ("a", "b"):
        state = decide(state, _d(site))
        assert state.status is ExportStatus.AWAITING
        with pytest.raises(ExportConflict, match=r"2 of 3|1 of 3"):
            downloadable(state)
    state = decide(state, _d("c"))
    assert state.status is ExportStatus.APPROVED
    downloadable(state)


def test_a_quorum_releases_and_later_decisions_are_refused() -> None:
    state = decide(decide(_awaiting(quorum=2), _d("a")), _d("b"))
    assert state.status is ExportStatus.APPROVED
    with pytest.raises(ExportConflict, match="decisions are final"):
        decide(state, _d("c", approve=False))


def test_any_rejection_rejects_for_good() -> None:
    state = decide(decide(_awaiting(quorum=2), _d("a")), _d("b", approve=False, reason="no"))
    assert state.status is ExportStatus.REJECTED
    with pytest.raises(ExportConflict, match="rejected by the steward"):
        downloadable(state)
    with pytest.raises(ExportConflict):
        decide(state, _d("c"))


def test_outsiders_and_second_decisions_are_refused() -> None:
    state = _awaiting()
    with pytest.raises(ExportForbidden, match="does not take part"):
        decide(state, _d("zeta"))
    state = decide(state, _d("a"))
    with pytest.raises(ExportConflict, match="decided on this export already"):
        decide(state, _d("a", approve=False, reason="changed my mind"))


def test_a_rejection_needs_a_reason() -> None:
    with pytest.raises(AirlockError, match="needs a reason"):
        decide(_awaiting(), _d("a", approve=False, reason=" "))


def test_a_refused_request_never_reaches_the_stewards() -> None:
    refused = opened(run_checks("t.csv", b"n\n4\n", min_cell=10, dp=True), ("a",), 1)
    assert refused.status is ExportStatus.REFUSED
    with pytest.raises(ExportConflict):
        decide(refused, _d("a"))
    with pytest.raises(ExportConflict, match="automatic checks refused"):
        downloadable(refused)


@given(st.integers(1, 10**4), st.integers(1, 20))
def test_the_quorum_is_at_most_the_sites(configured: int, n: int) -> None:
    sites = [f"s{i}" for i in range(n)]
    assert quorum_of(configured, sites) == min(configured, n)
    assert quorum_of(None, sites) == n


@given(st.lists(st.tuples(st.sampled_from("abcdz"), st.booleans()), max_size=8),
       st.integers(1, 4))
def test_no_sequence_of_decisions_releases_without_quorum(
        steps: list[tuple[str, bool]], quorum: int) -> None:
    state = _awaiting(("a", "b", "c", "d"), quorum)
    for site, approve in steps:
        with contextlib.suppress(ExportConflict, ExportForbidden):
            state = decide(state, _d(site, approve))
    approvers = {d.site for d in state.decisions if d.approve}
    released = state.status is ExportStatus.APPROVED
    assert released == (len(approvers) >= quorum
                        and all(d.approve for d in state.decisions))
    assert len(state.decisions) == len({d.site for d in state.decisions}) <= 4
