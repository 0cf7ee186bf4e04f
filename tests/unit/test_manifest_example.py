"""A good manifest using every field loads, normalizes, and round-trips unchanged."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from corral.errors import NotFound
from corral.manifest import (
    InstanceRange,
    SecretRef,
    load_manifest,
    parse_manifest,
    validate_manifest_data,
)

# Every field of the v1 manifest appears at least once; `x-` keys hold anchors to reuse.
FULL_MANIFEST = textwrap.dedent(
    """\
    name: shop
    x-python: &python python3
    services:
      db:
        mode: pet
        kind: service
        version: "16.1"
        command: [postgres, -D, "${DATA_DIR}", -p, "${PORT}"]
        cwd: data
        env:
          POSTGRES_PASSWORD: {secret: db-password}
          MAX_CONNECTIONS: 100
          FSYNC: true
          RATIO: 0.5
          GREETING: "hello ${CORRAL_INSTANCE}"
        user: postgres
        ports: {pg: 5432}
        resources: {cpu: 500m, memory: 1Gi}
        instances: 1
        health:
          startup: {tcp: pg, period: 500ms, failure_threshold: 30}
          liveness: {exec: "pg_isready -p ${PORT}", period: 10s, timeout: 2s}
        restart:
          backoff: {initial: 2s, max: 2m, reset_after: 1h}
          failed_after: 3
        stop: {signal: INT, grace: 1m30s}
      migrate:
        kind: task
        command: [*python, migrate.py]
        depends_on: {db: healthy}
      cache:
        command: redis-server --port ${PORT} --save ""
        ports: {redis: auto}
        resources: {memory: 64Mi}
        instances: 0
        stop: {signal: SIGQUIT, grace: 5}
      api:
        version: 7
        command: python api.py --port ${PORT} --admin ${PORT_ADMIN}
        user: 1000
        ports: {http: auto, admin: auto}
        resources: {cpu: 2}
        instances: {min: 2, max: 5}
        depends_on: {db: healthy, migrate: completed, cache: started}
        health:
          readiness: {http: /ready, port: admin, success_threshold: 2, initial_delay: 1s}
          liveness: {http: /healthz, timeout: 500ms}
      web:
        command: [python3, web.py]
        ports: {http: 8080}
        depends_on: [api]
        health:
          readiness: {tcp: 8080}
    gateway:
      listen: 127.0.0.1:8080
      routes:
        - name: web
          match: {path_prefix: /}
          service: web
    """
)


def test_every_field_is_read_and_normalized() -> None:
    loaded = parse_manifest(FULL_MANIFEST, source="shop.yaml", base_dir=Path("/srv/shop"))
    manifest = loaded.manifest
    assert manifest.name == "shop"
    assert list(manifest.services) == ["db", "migrate", "cache", "api", "web"]
    db = manifest.services["db"]
    assert (db.mode, db.kind, db.version, db.cwd, db.user) == (
        "pet",
        "service",
        "16.1",
        "data",
        "postgres",
    )
    assert db.command == ["postgres", "-D", "${DATA_DIR}", "-p", "${PORT}"]
    assert db.env == {
        "POSTGRES_PASSWORD": SecretRef(secret="db-password"),
        "MAX_CONNECTIONS": "100",
        "FSYNC": "true",
        "RATIO": "0.5",
        "GREETING": "hello ${CORRAL_INSTANCE}",
    }
    assert db.ports == {"pg": 5432}
    assert (db.resources.cpu, db.resources.memory) == (0.5, 1024**3)
    assert db.health.startup is not None and db.health.liveness is not None
    assert db.health.startup.kind == "tcp"
    assert (db.health.startup.tcp, db.health.startup.period) == ("pg", 0.5)
    assert db.health.startup.failure_threshold == 30
    assert db.health.liveness.exec == ["pg_isready", "-p", "${PORT}"]
    assert (db.health.liveness.period, db.health.liveness.timeout) == (10.0, 2.0)
    assert db.restart.backoff.initial == 2.0
    assert db.restart.backoff.max == 120.0
    assert db.restart.backoff.reset_after == 3600.0
    assert db.restart.failed_after == 3
    assert (db.stop.signal, db.stop.grace) == ("SIGINT", 90.0)

    assert manifest.services["migrate"].command == ["python3", "migrate.py"]
    cache = manifest.services["cache"]
    assert cache.command == ["redis-server", "--port", "${PORT}", "--save", ""]
    assert (cache.stop.signal, cache.stop.grace, cache.instances) == ("SIGQUIT", 5.0, 0)

    api = manifest.services["api"]
    assert (api.version, api.user, api.resources.cpu) == ("7", "1000", 2.0)
    assert api.instances == InstanceRange(min=2, max=5)
    assert api.depends_on == {"db": "healthy", "migrate": "completed", "cache": "started"}
    assert api.health.readiness is not None and api.health.liveness is not None
    assert api.health.readiness.kind == "http"
    assert (api.health.readiness.http, api.health.readiness.port) == ("/ready", "admin")
    assert api.health.readiness.success_threshold == 2
    assert api.health.readiness.initial_delay == 1.0
    assert api.health.liveness.timeout == 0.5
    assert api.default_port() == "http"

    web = manifest.services["web"]
    assert web.depends_on == {"api": "healthy"}
    assert web.health.readiness is not None and web.health.readiness.tcp == 8080
    assert manifest.gateway is not None and manifest.gateway["listen"] == "127.0.0.1:8080"
    assert manifest.graph().start_order() == [["cache", "db"], ["migrate"], ["api"], ["web"]]


def test_a_minimal_service_gets_the_documented_defaults() -> None:
    loaded = parse_manifest("services: {api: {command: ./api}}", source="m", base_dir=Path("/"))
    api = loaded.manifest.services["api"]
    assert api.model_dump() == {
        "mode": "cattle",
        "kind": "service",
        "version": None,
        "command": ["./api"],
        "cwd": None,
        "source": None,
        "env": {},
        "user": None,
        "ports": {},
        "resources": {"cpu": None, "memory": None},
        "instances": 1,
        "depends_on": {},
        "health": {"startup": None, "liveness": None, "readiness": None},
        "restart": {
            "backoff": {"initial": 1.0, "max": 60.0, "reset_after": 600.0},
            "failed_after": 5,
        },
        "stop": {"signal": "SIGTERM", "grace": 30.0, "drain": 1.0},
        "update": {
            "strategy": "rolling",
            "max_surge": "25%",
            "max_unavailable": 0,
            "min_healthy": 10.0,
            "healthy_deadline": 300.0,
            "progress_deadline": 600.0,
            "auto_rollback": True,
            "canary": 0,
            "auto_promote": False,
        },
        "disruption": {"max_unavailable": 1},
        "history": 10,
        "autoscale": None,
        "telemetry": {"auto_instrument": True},
    }
    assert api.instance_bounds() == (0, 1000)
    assert api.initial_instances() == 1
    assert api.default_port() is None


def test_a_probe_gets_kubernetes_like_defaults_except_a_one_second_period() -> None:
    text = "services: {api: {command: x, ports: {http: auto}, health: {liveness: {http: /}}}}"
    probe = parse_manifest(text, source="m", base_dir=Path("/")).manifest.services["api"]
    assert probe.health.liveness is not None
    assert probe.health.liveness.model_dump() == {
        "http": "/",
        "port": None,
        "tcp": None,
        "exec": None,
        "period": 1.0,
        "timeout": 1.0,
        "failure_threshold": 3,
        "success_threshold": 1,
        "initial_delay": 0.0,
    }


def test_the_full_manifest_round_trips_through_json_unchanged() -> None:
    first = parse_manifest(FULL_MANIFEST, source="shop.yaml", base_dir=Path("/srv"))
    data = json.loads(json.dumps(first.manifest.model_dump(mode="json")))
    second = validate_manifest_data(data, source="api", base_dir=Path("/srv"))
    assert second.manifest == first.manifest
    assert second.source == "api"


def test_a_directory_loads_its_corral_yaml(tmp_path: Path) -> None:
    (tmp_path / "corral.yaml").write_text(FULL_MANIFEST)
    (tmp_path / "manifest.yaml").write_text("not: used")
    loaded = load_manifest(tmp_path)
    assert loaded.path == tmp_path / "corral.yaml"
    assert loaded.base_dir == tmp_path
    assert "api" in loaded.manifest.services


def test_a_directory_without_corral_yaml_loads_manifest_yaml(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text("services: {api: {command: ./api}}")
    assert load_manifest(str(tmp_path)).path == tmp_path / "manifest.yaml"


def test_a_file_path_loads_that_file_relative_to_its_directory(tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text("services: {api: {command: ./api}}")
    loaded = load_manifest(tmp_path / "shop.yaml")
    assert (loaded.path, loaded.base_dir, loaded.source) == (
        tmp_path / "shop.yaml",
        tmp_path,
        str(tmp_path / "shop.yaml"),
    )


def test_a_missing_file_is_not_found_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        load_manifest(tmp_path / "nope.yaml")
    assert (
        caught.value.message == f"no manifest at {tmp_path / 'nope.yaml'}: the file does not exist"
    )
    assert caught.value.exit_code == 2


def test_a_directory_without_a_manifest_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        load_manifest(tmp_path)
    assert str(tmp_path) in caught.value.message
    assert "corral.yaml and manifest.yaml" in caught.value.message
