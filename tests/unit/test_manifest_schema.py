"""The JSON Schema editors use is generated from the model and committed."""

from __future__ import annotations

from pathlib import Path

from corral.manifest import manifest_json_schema, render_json_schema

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "manifest.schema.json"


def test_the_committed_json_schema_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == render_json_schema(), (
        "docs/manifest.schema.json is out of date with the manifest model; regenerate it with\n"
        "    .venv/bin/python -m corral.manifest.schema > docs/manifest.schema.json"
    )


def test_the_schema_refuses_unknown_keys_and_documents_the_fields() -> None:
    schema = manifest_json_schema()
    assert schema["title"] == "Corral manifest"
    assert schema["required"] == ["services"]
    assert schema["additionalProperties"] is False
    assert schema["patternProperties"] == {"^x-": {}}
    service = schema["$defs"]["Service"]
    assert service["additionalProperties"] is False
    assert service["required"] == ["command"]
    assert "description" in service["properties"]["depends_on"]
    assert "description" in schema["$defs"]["Probe"]["properties"]["period"]
    # Durations are written as text or seconds; the schema accepts both.
    period = schema["$defs"]["Probe"]["properties"]["period"]
    assert [alt["type"] for alt in period["anyOf"]] == ["number", "string"]
    assert schema["$defs"]["Stop"]["properties"]["signal"]["enum"][0] == "TERM"
