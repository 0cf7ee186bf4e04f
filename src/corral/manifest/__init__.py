"""The manifest: what a user writes, validated completely, with every problem at its path.

    load_manifest("shop.yaml")            → LoadedManifest(manifest, path, base_dir, source)
    validate_manifest_data(json, ...)     → the same, for data the API received
    service_record(name, service, ...)    → corral.model.ServiceRecord for the Store
    DependencyGraph(edges).start_order()  → levels of services that may start together

Every problem raises one ``corral.errors.ManifestError`` listing them all.

Names are imported on first use (PEP 562) so that ``python -m corral.manifest.schema`` runs the
schema module once, as ``__main__``, rather than after the package already imported it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.manifest.expand import expand, referenced_variables
    from corral.manifest.graph import DependencyCycle, DependencyGraph, render_cycle
    from corral.manifest.load import (
        MANIFEST_FILENAMES,
        LoadedManifest,
        load_manifest,
        parse_manifest,
        render_path,
        validate_manifest_data,
        validate_service_data,
    )
    from corral.manifest.records import (
        secret_references,
        service_record,
        service_spec,
        spec_from_dict,
    )
    from corral.manifest.schema import (
        SCALE_LIMIT,
        SIGNALS,
        Backoff,
        Health,
        InstanceRange,
        Manifest,
        Probe,
        Resources,
        Restart,
        SecretRef,
        Service,
        Stop,
        manifest_json_schema,
        port_env_var,
        render_json_schema,
    )
    from corral.manifest.units import (
        UnitError,
        format_duration,
        format_size,
        parse_duration,
        parse_percent,
        parse_size,
    )

_HOME = {
    "expand": "corral.manifest.expand",
    "referenced_variables": "corral.manifest.expand",
    "DependencyCycle": "corral.manifest.graph",
    "DependencyGraph": "corral.manifest.graph",
    "render_cycle": "corral.manifest.graph",
    "MANIFEST_FILENAMES": "corral.manifest.load",
    "LoadedManifest": "corral.manifest.load",
    "load_manifest": "corral.manifest.load",
    "parse_manifest": "corral.manifest.load",
    "render_path": "corral.manifest.load",
    "validate_manifest_data": "corral.manifest.load",
    "validate_service_data": "corral.manifest.load",
    "secret_references": "corral.manifest.records",
    "service_record": "corral.manifest.records",
    "service_spec": "corral.manifest.records",
    "spec_from_dict": "corral.manifest.records",
    "SCALE_LIMIT": "corral.manifest.schema",
    "SIGNALS": "corral.manifest.schema",
    "Backoff": "corral.manifest.schema",
    "Health": "corral.manifest.schema",
    "InstanceRange": "corral.manifest.schema",
    "Manifest": "corral.manifest.schema",
    "Probe": "corral.manifest.schema",
    "Resources": "corral.manifest.schema",
    "Restart": "corral.manifest.schema",
    "SecretRef": "corral.manifest.schema",
    "Service": "corral.manifest.schema",
    "Stop": "corral.manifest.schema",
    "manifest_json_schema": "corral.manifest.schema",
    "port_env_var": "corral.manifest.schema",
    "render_json_schema": "corral.manifest.schema",
    "UnitError": "corral.manifest.units",
    "format_duration": "corral.manifest.units",
    "format_size": "corral.manifest.units",
    "parse_duration": "corral.manifest.units",
    "parse_percent": "corral.manifest.units",
    "parse_size": "corral.manifest.units",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'corral.manifest' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "MANIFEST_FILENAMES",
    "SCALE_LIMIT",
    "SIGNALS",
    "Backoff",
    "DependencyCycle",
    "DependencyGraph",
    "Health",
    "InstanceRange",
    "LoadedManifest",
    "Manifest",
    "Probe",
    "Resources",
    "Restart",
    "SecretRef",
    "Service",
    "Stop",
    "UnitError",
    "expand",
    "format_duration",
    "format_size",
    "load_manifest",
    "manifest_json_schema",
    "parse_duration",
    "parse_manifest",
    "parse_percent",
    "parse_size",
    "port_env_var",
    "referenced_variables",
    "render_cycle",
    "render_json_schema",
    "render_path",
    "secret_references",
    "service_record",
    "service_spec",
    "spec_from_dict",
    "validate_manifest_data",
    "validate_service_data",
]
