"""The embedded time series: points downsampled as they age, exact against the raw samples,
bounded by the configured retention, and queryable at any step over any kept window."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import ManifestError, UserError
from corral.manifest.load import parse_manifest
from corral.telemetry import retention
from corral.telemetry.retention import DEFAULT_TIERS, Point, Tier
from corral.telemetry.tsdb import MetricSample, TimeSeriesDB

T0 = 1_700_000_400  # on an hour boundary
SMALL = (Tier(10, 120), Tier(60, 1200), Tier(300, 7200))
LABELS = {"service": "orders", "instance": "orders-0", "release": "3", "node": "local"}


def test_default_retention_is_10s_for_a_day_1m_for_a_week_1h_for_90_days() -> None:
    assert retention.parse_tiers("10s:24h,1m:7d,1h:90d") == DEFAULT_TIERS
    assert retention.format_tiers(DEFAULT_TIERS) == "10s:1d,1m:1w,1h:90d"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("10s:24h,15s:7d", "not a larger multiple"),
        ("10s:24h,1m:12h", "not kept longer"),
        ("10s", "has no ':'"),
        ("10x:24h", "is not a duration"),
        ("", "at least one tier"),
    ],
)
def test_a_bad_retention_is_refused_with_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(UserError, match=says) as caught:
        retention.parse_tiers(text)
    assert caught.value.hint


def test_an_slo_window_longer_than_the_retention_is_a_problem() -> None:
    assert retention.window_problem(30 * 86_400, DEFAULT_TIERS) == ""
    problem = retention.window_problem(120 * 86_400, DEFAULT_TIERS)
    assert "longer than the metrics are kept (90d" in problem


def test_plan_never_rolls_up_an_unfinished_bucket_and_rolls_up_before_pruning() -> None:
    plan = retention.plan(T0 + 65, SMALL, [0, 0, 0])
    # Tier 1's [T0, T0+60) needs tier 0's last bucket (T0+50) to be complete: at T0+65 it is not.
    # Nothing older than the target tier keeps is rolled up (bounded work after an outage).
    assert plan.rollups == (
        retention.Rollup(1, T0 - 1140, T0),
        retention.Rollup(2, T0 - 7200, T0),
    )
    plan = retention.plan(T0 + 70, SMALL, plan.watermarks)
    assert plan.rollups == (retention.Rollup(1, T0, T0 + 60),)
    assert [p.before for p in plan.prunes] == [T0 + 70 - 120, T0 + 70 - 1200, T0 + 70 - 7200]


def _brute(raw: list[tuple[int, float]], size: int, agg: str) -> dict[int, float]:
    groups: dict[int, list[float]] = {}
    for ts, v in raw:
        groups.setdefault(ts // size * size, []).append(v)

    def pick(vs: list[float]) -> float:
        if agg == "avg":
            return sum(vs) / len(vs)
        return {"max": max(vs), "min": min(vs), "last": vs[-1]}[agg]

    return {ts: pick(vs) for ts, vs in groups.items()}


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    maintain_every=st.sampled_from([10, 30, 60, 250, 700]),
    agg=st.sampled_from(["avg", "max", "min", "last"]),
)
def test_downsampled_points_equal_a_brute_force_over_the_raw_samples(
    tmp_path_factory: pytest.TempPathFactory, seed: int, maintain_every: int, agg: str
) -> None:
    rng = random.Random(seed)
    db = TimeSeriesDB(tmp_path_factory.mktemp("tsdb") / "m.db", SMALL)
    raw: list[tuple[int, float]] = []
    try:
        now = T0
        for _ in range(400):  # 400 samples every 5 s (two per fine bucket): 2000 s
            value = float(rng.randint(0, 100))
            db.write([MetricSample("corral_instance_rss_bytes", LABELS, value)], now)
            raw.append((now, value))
            now += 5
            if now % maintain_every < 5:
                db.maintain(now)
        db.maintain(now)
        # Fine points within a minute, coarse over 20 minutes, coarsest over the whole run:
        # each equals the brute force over the raw samples in its bucket.
        for since, step in ((now - 60, 10), (now - 1200, 60), (T0, 300)):
            got = db.query("corral_instance_rss_bytes", {}, since, now, step, agg, now)
            assert got["step_s"] == step
            expected = _brute([r for r in raw if r[0] >= since], step, agg)
            points = dict(got["series"][0]["points"])
            # the first bucket may start before `since`: compare the ones fully inside
            for ts, value in points.items():
                if ts >= since:
                    assert value == pytest.approx(expected[ts]), (ts, step)
            assert max(points) == (now - 1) // step * step, "the newest bucket is there"
        # bounded by the retention: fine ≤ 120 s of 10 s buckets, mid ≤ 1200 s of 1 min.
        assert db.rows(0) <= 120 // 10 + 1
        assert db.rows(1) <= 1200 // 60 + 1
    finally:
        db.close()


def test_a_query_asks_the_coarsest_tier_that_resolves_its_step(tmp_path: Path) -> None:
    db = TimeSeriesDB(tmp_path / "m.db")
    now = T0 + 86_400 * 3
    try:
        db.write([MetricSample("m", {"a": "1"}, 1.0)], now)
        got = db.query("m", {}, now - 3600, now + 1, 10, "avg", now)
        assert (got["resolution_s"], got["step_s"]) == (10, 10)
        got = db.query("m", {}, now - 2 * 86_400, now + 1, 10, "avg", now)
        assert (got["resolution_s"], got["step_s"]) == (60, 60), "10 s points are kept 24 h"
        got = db.query("m", {}, now - 30 * 86_400, now + 1, 7200, "avg", now)
        assert (got["resolution_s"], got["step_s"]) == (3600, 7200)
        with pytest.raises(UserError, match="over 11000 points"):
            db.query("m", {}, now - 3600, now + 200_000, 10, "avg", now)
    finally:
        db.close()


def test_a_query_filters_series_by_labels(tmp_path: Path) -> None:
    db = TimeSeriesDB(tmp_path / "m.db")
    try:
        db.write(
            [
                MetricSample("threads", {**LABELS, "instance": "orders-0"}, 3),
                MetricSample("threads", {**LABELS, "instance": "orders-1"}, 5),
            ],
            T0,
        )
        got = db.query("threads", {"instance": "orders-1"}, T0 - 60, T0 + 10, 10, "last", T0)
        assert [s["labels"]["instance"] for s in got["series"]] == ["orders-1"]
        assert got["series"][0]["points"] == [[T0, 5.0]]
        assert db.names() == ["threads"]
    finally:
        db.close()


def test_a_refused_batch_leaves_no_series_behind_to_collide_with_the_next(
    tmp_path: Path,
) -> None:
    db = TimeSeriesDB(tmp_path / "m.db")
    try:
        bad = MetricSample("bad", LABELS, "x")  # type: ignore[arg-type]  # the bad value is the test
        with pytest.raises(ValueError):
            db.write([MetricSample("lost", LABELS, 1.0), bad], T0)
        db.write([MetricSample("kept", LABELS, 7.0)], T0)
        assert db.names() == ["kept"]
        assert db.query("lost", {}, T0 - 60, T0 + 10, 10, "last", T0)["series"] == []
        got = db.query("kept", {}, T0 - 60, T0 + 10, 10, "last", T0)
        assert got["series"][0]["points"] == [[T0, 7.0]]
    finally:
        db.close()


def test_rate_reads_a_counter_drop_as_a_reset() -> None:
    points = [Point(0, 1, 10, 10, 10, 10), Point(10, 1, 30, 30, 30, 30), Point(20, 1, 4, 4, 4, 4)]
    assert retention.values(points, "rate", 10) == [(10, 2.0), (20, 0.4)]


def test_watermarks_survive_a_restart_so_no_bucket_is_rolled_up_twice(tmp_path: Path) -> None:
    db = TimeSeriesDB(tmp_path / "m.db", SMALL)
    for i in range(12):
        db.write([MetricSample("m", {}, float(i))], T0 + 10 * i)
    db.maintain(T0 + 130)
    db.close()
    again = TimeSeriesDB(tmp_path / "m.db", SMALL)
    try:
        assert again.watermarks[1] == T0 + 120
        assert again.maintain(T0 + 131).rollups == ()
        got = again.query("m", {}, T0, T0 + 120, 60, "count", T0 + 131)
        assert got["series"][0]["points"] == [[T0, 6.0], [T0 + 60, 6.0]]
    finally:
        again.close()


MANIFEST = """
services:
  web: {command: [python, -m, http.server]}
gateway:
  routes:
    - name: web
      service: web
      slo: {availability: 99.9%%, window: 30d}
metrics:
  retention: %s
"""


def test_a_manifest_slo_window_longer_than_the_metrics_retention_is_refused_with_a_hint(
    tmp_path: Path,
) -> None:
    parse_manifest(MANIFEST % "10s:24h,1m:7d,1h:90d", source="corral.yaml", base_dir=tmp_path)
    with pytest.raises(ManifestError) as caught:
        parse_manifest(MANIFEST % "10s:24h,1m:7d", source="corral.yaml", base_dir=tmp_path)
    [found] = caught.value.problems
    assert "slo.window: window 30d is longer than the metrics are kept (1w" in found.message
    assert "metrics.retention" in found.hint
    with pytest.raises(ManifestError, match="not kept longer"):
        parse_manifest(MANIFEST % "10s:24h,1m:1h", source="corral.yaml", base_dir=tmp_path)
