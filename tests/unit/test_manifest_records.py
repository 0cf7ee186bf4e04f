"""A validated service becomes the spec and record the control plane stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.errors import ManifestError
from corral.manifest import (
    Manifest,
    parse_manifest,
    secret_references,
    service_record,
    service_spec,
    spec_from_dict,
)
from corral.model import BackoffPolicy, Dependency, ServiceRecord, decode, encode
from tests.unit.test_manifest_example import FULL_MANIFEST

BASE = Path("/srv/shop")


def full() -> Manifest:
    return parse_manifest(FULL_MANIFEST, source="shop.yaml", base_dir=BASE).manifest


def test_a_spec_is_json_with_seconds_bytes_and_an_absolute_cwd() -> None:
    spec = service_spec("db", full().services["db"], BASE)
    assert json.loads(json.dumps(spec)) == spec
    assert spec["cwd"] == "/srv/shop/data"
    assert spec["command"] == ["postgres", "-D", "${DATA_DIR}", "-p", "${PORT}"]
    assert spec["resources"] == {"cpu": 0.5, "memory": 1024**3}
    assert spec["stop"] == {"signal": "SIGINT", "grace": 90.0, "drain": 1.0}
    assert spec["restart"]["backoff"] == {"initial": 2.0, "max": 120.0, "reset_after": 3600.0}
    assert spec["health"]["startup"]["period"] == 0.5


def test_secrets_stay_references_in_the_spec() -> None:
    db = full().services["db"]
    spec = service_spec("db", db, BASE)
    assert spec["env"]["POSTGRES_PASSWORD"] == {"secret": "db-password"}
    assert secret_references(db) == ["db-password"]


def test_a_service_without_cwd_runs_in_the_manifest_directory() -> None:
    assert service_spec("web", full().services["web"], BASE)["cwd"] == "/srv/shop"


def test_an_absolute_cwd_is_kept() -> None:
    text = "services: {api: {command: x, cwd: /opt/api}}"
    api = parse_manifest(text, source="m", base_dir=BASE).manifest.services["api"]
    assert service_spec("api", api, BASE)["cwd"] == "/opt/api"


@pytest.mark.parametrize("name", ["db", "migrate", "cache", "api", "web"])
def test_a_stored_spec_validates_back_to_the_same_service(name: str) -> None:
    service = full().services[name]
    spec = json.loads(json.dumps(service_spec(name, service, BASE)))
    again = spec_from_dict(spec)
    assert again.model_copy(update={"cwd": service.cwd}) == service
    assert service_spec(name, again, BASE) == service_spec(name, service, BASE)


def test_a_bad_stored_spec_raises_a_manifest_error_with_paths() -> None:
    spec = service_spec("api", full().services["api"], BASE)
    spec["instances"] = {"min": 9, "max": 1}
    spec["health"]["readiness"]["port"] = "nope"
    with pytest.raises(ManifestError) as caught:
        spec_from_dict(spec, name="api")
    assert [p.path for p in caught.value.problems] == [
        "services.api.instances",
        "services.api.health.readiness.port",
    ]


def test_a_record_starts_at_min_and_carries_bounds_dependencies_and_backoff() -> None:
    record = service_record("api", full().services["api"], release=3, base_dir=BASE)
    assert isinstance(record, ServiceRecord)
    assert (record.name, record.release, record.desired, record.min, record.max) == (
        "api",
        3,
        2,
        2,
        5,
    )
    assert (record.mode, record.kind) == ("cattle", "service")
    assert record.depends_on == [
        Dependency("db", "healthy"),
        Dependency("migrate", "completed"),
        Dependency("cache", "started"),
    ]
    assert record.backoff == BackoffPolicy(initial=1.0, max=60.0, reset_after=600.0, failed_after=5)
    assert record.spec == service_spec("api", full().services["api"], BASE)
    assert decode(encode(record), ServiceRecord) == record


def test_a_record_carries_the_services_own_backoff() -> None:
    record = service_record("db", full().services["db"], release=1, base_dir=BASE)
    assert record.backoff == BackoffPolicy(
        initial=2.0, max=120.0, reset_after=3600.0, failed_after=3
    )
    assert (record.mode, record.desired, record.min, record.max) == ("pet", 1, 0, 1000)


def test_a_scaled_count_is_kept_within_the_new_bounds() -> None:
    api = full().services["api"]
    assert service_record("api", api, release=2, base_dir=BASE, desired=4).desired == 4
    assert service_record("api", api, release=2, base_dir=BASE, desired=9).desired == 5
    assert service_record("api", api, release=2, base_dir=BASE, desired=0).desired == 2


def test_a_plain_count_starts_there_and_may_scale_to_zero() -> None:
    cache = full().services["cache"]
    record = service_record("cache", cache, release=1, base_dir=BASE)
    assert (record.desired, record.min) == (0, 0)
