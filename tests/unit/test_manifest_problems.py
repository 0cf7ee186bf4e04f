"""Every bad manifest is refused with every problem at its path, a readable message and a hint."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from corral.errors import ManifestError, Problem
from corral.manifest import load_manifest, parse_manifest, validate_manifest_data


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(textwrap.dedent(text), source="shop.yaml", base_dir=Path("/srv"))
    assert caught.value.exit_code == 2 and caught.value.status == 422
    return caught.value.problems


def the_problem(text: str) -> Problem:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# (yaml, path, message, text the hint contains)
CASES = {
    "unknown service key": (
        "services: {api: {command: x, restrat: {}}}",
        "services.api.restrat",
        "unknown key 'restrat'",
        "did you mean 'restart'?",
    ),
    "unknown top-level key": (
        "servics: {api: {command: x}}\nservices: {api: {command: x}}",
        "servics",
        "unknown key 'servics'",
        "did you mean 'services'?",
    ),
    "unknown key deep in a probe": (
        "services: {api: {command: x, ports: {h: auto}, health: {liveness: {http: /, perod: 2s}}}}",
        "services.api.health.liveness.perod",
        "unknown key 'perod'",
        "did you mean 'period'?",
    ),
    "unknown key with nothing close lists the allowed keys": (
        "services: {api: {command: x, stop: {zzz: 1}}}",
        "services.api.stop.zzz",
        "unknown key 'zzz'",
        "allowed keys here: signal, grace",
    ),
    "unknown probe kind": (
        "services: {api: {command: x, health: {liveliness: {tcp: 80}}}}",
        "services.api.health.liveliness",
        "unknown key 'liveliness'",
        "did you mean 'liveness'?",
    ),
    "wrong type: quoted number": (
        "services: {api: {command: x, restart: {failed_after: '3'}}}",
        "services.api.restart.failed_after",
        "expected an integer, got '3'",
        "write the number without quotes",
    ),
    "wrong type: mapping expected": (
        "services: {api: {command: x, resources: [1]}}",
        "services.api.resources",
        "expected a mapping, got a list",
        "",
    ),
    "wrong type: service without a body": (
        "services: {api: }",
        "services.api",
        "expected a mapping, got nothing (null)",
        "give it a value",
    ),
    "wrong type: instances as text": (
        "services: {api: {command: x, instances: three}}",
        "services.api.instances",
        "expected a number of instances or {min, max}, got 'three'",
        "instances: {min: 1, max: 4}",
    ),
    "wrong type: env value": (
        "services: {api: {command: x, env: {A: [1]}}}",
        "services.api.env.A",
        "expected a string, number, boolean or {secret: NAME}, got a list",
        "",
    ),
    "wrong type: command word": (
        "services: {api: {command: [python, 3]}}",
        "services.api.command[1]",
        "expected a string, got integer 3",
        "",
    ),
    "bad literal with a close match": (
        "services: {api: {command: x, mode: pets}}",
        "services.api.mode",
        "expected 'cattle' or 'pet', got 'pets'",
        "did you mean 'pet'?",
    ),
    "bad dependency condition": (
        "services: {api: {command: x, depends_on: {db: ready}}, db: {command: y}}",
        "services.api.depends_on.db",
        "expected 'healthy', 'started' or 'completed', got 'ready'",
        "",
    ),
    "bad duration": (
        "services: {api: {command: x, stop: {grace: 3x}}}",
        "services.api.stop.grace",
        "invalid duration '3x'",
        "1m30s",
    ),
    "zero probe period": (
        "services: {api: {command: x, health: {liveness: {exec: [true], period: 0s}}}}",
        "services.api.health.liveness.period",
        "must be greater than 0, got 0s",
        "",
    ),
    "bad size": (
        "services: {api: {command: x, resources: {memory: 256mb}}}",
        "services.api.resources.memory",
        "invalid size '256mb'",
        "256Mi",
    ),
    "size without a unit is far too small": (
        "services: {api: {command: x, resources: {memory: 256}}}",
        "services.api.resources.memory",
        "a memory limit of 256 bytes is too small to start a process",
        "did you mean 256Mi?",
    ),
    "cpu zero": (
        "services: {api: {command: x, resources: {cpu: 0}}}",
        "services.api.resources.cpu",
        "must be greater than 0, got 0",
        "",
    ),
    "min greater than max": (
        "services: {api: {command: x, instances: {min: 5, max: 2}}}",
        "services.api.instances",
        "min (5) is greater than max (2)",
        "",
    ),
    "negative instances": (
        "services: {api: {command: x, instances: -1}}",
        "services.api.instances",
        "must be at least 0, got -1",
        "",
    ),
    "instance range missing max": (
        "services: {api: {command: x, instances: {min: 1}}}",
        "services.api.instances.max",
        "is required but missing",
        "scale",
    ),
    "missing command": (
        "services: {api: {mode: pet}}",
        "services.api.command",
        "is required but missing",
        "the program and its arguments",
    ),
    "empty command": (
        "services: {api: {command: ''}}",
        "services.api.command",
        "the command is empty",
        "python app.py",
    ),
    "unclosed quote in command": (
        'services: {api: {command: "python \'app.py"}}',
        "services.api.command",
        'cannot split "python \'app.py" into words: no closing quotation',
        "write the command as a list",
    ),
    "malformed variable reference": (
        "services: {api: {command: 'serve --port ${PORT'}}",
        "services.api.command[2]",
        "'${PORT' has a malformed ${...} reference",
        "$$ for a literal $",
    ),
    "unknown dependency": (
        "services: {api: {command: x, depends_on: [dbb]}, db: {command: y}}",
        "services.api.depends_on.dbb",
        "depends on 'dbb', which is not a service",
        "did you mean 'db'?",
    ),
    "self dependency": (
        "services: {api: {command: x, depends_on: [api]}}",
        "services.api.depends_on.api",
        "a service cannot depend on itself",
        "remove this dependency",
    ),
    "completed on a service": (
        "services: {api: {command: x, depends_on: {db: completed}}, db: {command: y}}",
        "services.api.depends_on.db",
        "completed applies only to tasks, and 'db' is a service",
        "set kind: task on db",
    ),
    "dependency listed twice": (
        "services: {api: {command: x, depends_on: [db, db]}, db: {command: y}}",
        "services.api.depends_on",
        "'db' is listed twice",
        "",
    ),
    "probe names an undeclared port": (
        "services: {api: {command: x, ports: {http: auto}, health: {readiness: "
        "{http: /ready, port: admn}}}}",
        "services.api.health.readiness.port",
        "names port 'admn', which services.api.ports does not declare",
        "declare it: ports: {admn: auto}",
    ),
    "tcp probe names an undeclared port": (
        "services: {api: {command: x, ports: {http: auto}, health: {liveness: {tcp: htp}}}}",
        "services.api.health.liveness.tcp",
        "names port 'htp', which services.api.ports does not declare",
        "did you mean 'http'?",
    ),
    "http probe on a service without ports": (
        "services: {api: {command: x, health: {readiness: {http: /ready}}}}",
        "services.api.health.readiness.http",
        "an http probe needs a port, and this service declares none",
        "ports: {http: auto}",
    ),
    "probe with two kinds": (
        "services: {api: {command: x, ports: {h: auto}, health: {liveness: {http: /, tcp: h}}}}",
        "services.api.health.liveness",
        "a probe needs exactly one of http, tcp or exec (got http and tcp)",
        "{http: /healthz}",
    ),
    "probe with no kind": (
        "services: {api: {command: x, health: {liveness: {period: 2s}}}}",
        "services.api.health.liveness",
        "a probe needs exactly one of http, tcp or exec (got none)",
        "",
    ),
    "http probe path without a slash": (
        "services: {api: {command: x, ports: {h: auto}, health: {liveness: {http: healthz}}}}",
        "services.api.health.liveness",
        "the http probe path 'healthz' must start with /",
        "http: /healthz",
    ),
    "bad stop signal": (
        "services: {api: {command: x, stop: {signal: TERMINATE}}}",
        "services.api.stop.signal",
        "unknown stop signal 'TERMINATE'",
        "did you mean 'TERM'?",
    ),
    "backoff initial above max": (
        "services: {api: {command: x, restart: {backoff: {initial: 2m}}}}",
        "services.api.restart.backoff",
        "initial (120s) is longer than max (60s)",
        "",
    ),
    "port out of range": (
        "services: {api: {command: x, ports: {http: 70000}}}",
        "services.api.ports.http",
        'expected "auto" or a port number from 1 to 65535, got integer 70000',
        "$PORT_<NAME>",
    ),
    "two port names for one number": (
        "services: {api: {command: x, ports: {http: 8080, web: 8080}}}",
        "services.api.ports",
        "ports 'http' and 'web' both ask for port 8080",
        "",
    ),
    "bad service name": (
        "services: {Orders_API: {command: x}}",
        "services.Orders_API",
        "'Orders_API' is not a valid name",
        "e.g. 'orders-api'",
    ),
    "bad env name": (
        "services: {api: {command: x, env: {1X: y}}}",
        "services.api.env.1X",
        "'1X' is not a valid environment variable name",
        "",
    ),
    "empty secret reference": (
        "services: {api: {command: x, env: {A: {secrt: pw}}}}",
        "services.api.env.A.secrt",
        "unknown key 'secrt'",
        "did you mean 'secret'?",
    ),
    "version that YAML made a float": (
        "services: {api: {command: x, version: 1.10}}",
        "services.api.version",
        "YAML read this version as the number 1.1, which loses digits (1.10 is 1.1)",
        'quote it: version: "1.1"',
    ),
    "services missing": (
        "name: shop",
        "services",
        "is required but missing",
        "the services to run",
    ),
    "services not a mapping": (
        "services: [api, web]",
        "services",
        "expected a mapping, got a list",
        "",
    ),
}


@pytest.mark.parametrize(("text", "path", "message", "hint"), CASES.values(), ids=list(CASES))
def test_a_bad_manifest_reports_the_path_message_and_hint(
    text: str, path: str, message: str, hint: str
) -> None:
    problems = problems_of(text)
    found = [p for p in problems if p.path == path]
    assert found, f"no problem at {path}: {problems}"
    assert found[0].message == message
    assert hint in found[0].hint


def test_unknown_keys_are_reported_alongside_a_missing_secret_name() -> None:
    problems = problems_of("services: {api: {command: x, env: {A: {secrt: pw}}}}")
    assert [(p.path, p.message) for p in problems] == [
        ("services.api.env.A.secret", "is required but missing"),
        ("services.api.env.A.secrt", "unknown key 'secrt'"),
    ]


def test_a_dependency_cycle_is_printed_as_the_cycle() -> None:
    problem = the_problem(
        """\
        services:
          worker: {command: w, depends_on: [api]}
          api: {command: a, depends_on: [worker]}
        """
    )
    assert problem == Problem(
        "services.api.depends_on",
        "dependency cycle: api → worker → api",
        "remove one of the depends_on entries in the cycle",
    )


def test_every_cycle_is_reported() -> None:
    problems = problems_of(
        """\
        services:
          a: {command: x, depends_on: [b]}
          b: {command: x, depends_on: [a]}
          c: {command: x, depends_on: {d: started}}
          d: {command: x, depends_on: [e]}
          e: {command: x, depends_on: [c]}
        """
    )
    assert [p.message for p in problems] == [
        "dependency cycle: a → b → a",
        "dependency cycle: c → d → e → c",
    ]


def test_yaml_syntax_errors_give_line_and_column() -> None:
    problem = the_problem("services:\n  api:\n    command: x\n   bad: [\n")
    assert problem.path == ""
    assert problem.message == (
        "invalid YAML at line 4:4: while parsing a block mapping: "
        "expected <block end>, but found '<block mapping start>'"
    )
    assert problem.hint == "check the indentation and quoting there"


def test_yaml_syntax_error_points_at_the_offending_line() -> None:
    problem = the_problem("services:\n  api: {command: x\n  web: {command: y}\n")
    assert "invalid YAML at line 3:" in problem.message


def test_duplicate_port_names_are_reported_with_both_lines() -> None:
    problem = the_problem(
        """\
        services:
          api:
            command: x
            ports:
              http: auto
              http: 8080
        """
    )
    assert problem.path == "services.api.ports.http"
    assert problem.message == "duplicate key 'http' (at line 5:7 and again at 6:7)"
    assert "YAML would silently keep only the last" in problem.hint


def test_duplicate_services_are_reported() -> None:
    problem = the_problem(
        """\
        services:
          api: {command: x}
          web: {command: y}
          api: {command: z}
        """
    )
    assert problem.path == "services.api"
    assert problem.message == "duplicate key 'api' (at line 2:3 and again at 4:3)"


def test_keys_merged_from_an_anchor_are_not_duplicates() -> None:
    text = textwrap.dedent(
        """\
        x-base: &base {command: x, instances: 2}
        services:
          api: {<<: *base, instances: 3}
        """
    )
    loaded = parse_manifest(text, source="m", base_dir=Path("/"))
    assert loaded.manifest.services["api"].instances == 3


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_an_empty_manifest_is_a_clear_problem(text: str) -> None:
    problem = the_problem(text)
    assert (problem.path, problem.message) == ("", "the manifest is empty")
    assert "services:" in problem.hint


@pytest.mark.parametrize(
    ("text", "got"), [("- api\n- web\n", "a list"), ("hello\n", "'hello'"), ("42", "integer 42")]
)
def test_a_manifest_that_is_not_a_mapping_is_a_clear_problem(text: str, got: str) -> None:
    problem = the_problem(text)
    assert problem.message == f"the manifest must be a mapping with a services: key, got {got}"


def test_more_than_one_yaml_document_is_refused() -> None:
    problem = the_problem("services: {}\n---\nservices: {}\n")
    assert problem.message == (
        "invalid YAML at line 2:1: expected a single document in the stream: "
        "but found another document"
    )


def test_every_problem_is_reported_together() -> None:
    problems = problems_of(
        """\
        services:
          api:
            command: python api.py
            instances: {min: 5, max: 2}
            ports: {http: auto, http: 8080}
            depends_on: [worker, dbb]
            health:
              readiness: {http: /healthz, port: admin}
            stop: {signal: TERM, grace: 3x}
            restrat: {}
          worker:
            command: python worker.py
            depends_on: {api: healthy, db: completed}
            resources: {memory: lots}
          db:
            command: [postgres]
            mode: cow
        """
    )
    assert [p.path for p in problems] == [
        "services.api.ports.http",  # YAML: duplicate key
        "services.api.instances",  # schema, in document order
        "services.api.stop.grace",
        "services.api.restrat",
        "services.worker.resources.memory",
        "services.db.mode",
        "services.api.health.readiness.port",  # references, on the raw data
        "services.api.depends_on.dbb",
        "services.worker.depends_on.db",
        "services.api.depends_on",
    ]
    assert problems[-1].message == "dependency cycle: api → worker → api"


def test_reference_checks_run_even_when_the_services_involved_are_broken() -> None:
    problems = problems_of(
        """\
        services:
          api: {command: 5, depends_on: [web, nope], instances: many}
          web: {commnd: x, depends_on: [api]}
        """
    )
    paths = [p.path for p in problems]
    assert "services.api.depends_on.nope" in paths
    assert "services.web.commnd" in paths
    assert "services.web.command" in paths
    cycle = [p for p in problems if p.message.startswith("dependency cycle")]
    assert [p.message for p in cycle] == ["dependency cycle: api → web → api"]


def test_the_error_lists_every_problem_in_its_message() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(
            "services: {api: {command: x, mode: pets, instances: -1}}",
            source="shop.yaml",
            base_dir=Path("/"),
        )
    assert caught.value.message == (
        "shop.yaml has 2 problems:\n"
        "  - services.api.mode: expected 'cattle' or 'pet', got 'pets'"
        " (hint: did you mean 'pet'?)\n"
        "  - services.api.instances: must be at least 0, got -1"
    )
    assert caught.value.problem_dicts()[0] == {
        "path": "services.api.mode",
        "message": "expected 'cattle' or 'pet', got 'pets'",
        "hint": "did you mean 'pet'?",
    }


def test_json_data_from_the_api_gets_the_same_problems() -> None:
    with pytest.raises(ManifestError) as caught:
        validate_manifest_data(
            {"services": {"api": {"command": "x", "depends_on": ["db"]}}},
            source="request body",
            base_dir=Path("/"),
        )
    assert caught.value.problems == [
        Problem(
            "services.api.depends_on.db", "depends on 'db', which is not a service", "services: api"
        )
    ]
    assert caught.value.message.startswith("request body has 1 problem:")


def test_an_unknown_dependency_with_a_bad_condition_gets_both_problems() -> None:
    problems = problems_of("services: {api: {command: x, depends_on: {dbb: 5}}, db: {command: y}}")
    assert [(p.path, p.message) for p in problems] == [
        (
            "services.api.depends_on.dbb",
            "expected 'healthy', 'started' or 'completed', got integer 5",
        ),
        ("services.api.depends_on.dbb", "depends on 'dbb', which is not a service"),
    ]


def test_non_string_keys_are_reported() -> None:
    problem = the_problem("services: {api: {command: x, ports: {1: auto}}}")
    assert (problem.path, problem.message) == (
        "services.api.ports.1",
        "keys here must be strings, got integer 1",
    )


def test_a_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "corral.yaml"
    path.write_bytes(b"services: {api: {command: \xff}}")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.problems[0].message == "the file is not UTF-8 text (byte 26)"
