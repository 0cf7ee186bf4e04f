"""Not imported by Corral: this directory is put in front of a Python instance's PYTHONPATH.

It holds the auto-instrumentation bootstrap only (``sitecustomize.py`` and the module it loads,
``_corral_otel.py``); see ``corral.telemetry.autoinstrument`` for the theory of operation.
"""
