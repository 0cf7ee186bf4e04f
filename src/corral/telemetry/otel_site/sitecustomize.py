"""Corral's auto-instrumentation bootstrap, imported by Python at start-up (``site``).

It must parse on any Python the app may be run by, even one far too old for the
OpenTelemetry packages, so that such an app still runs and says why it is not traced: hence
no annotations, f-strings or ``from __future__`` here (type comments only). The real work is in
``_corral_otel`` (Python >= 3.10), imported only after the version check. Nothing raised here
ever reaches the app. Another ``sitecustomize`` further down the path (a distribution's or a
virtualenv's) is still run afterwards, as ``opentelemetry-instrument`` does.
"""

# ruff: noqa: UP031, PTH100, PTH113, PTH120  -- must parse and run on any Python (even 2.7 and
# 3.5, to say why they are not traced): %-formatting and os.path, no f-strings or pathlib.

import os
import sys

_MARKER = "corral-otel:"
_MINIMUM = (3, 10)


def _say(status, detail):
    # type: (str, str) -> None
    """One line the agent reads (check mode, on stdout) or a person reads (the app's log)."""
    line = "%s %s %s\n" % (_MARKER, status, detail)
    stream = sys.stdout if os.environ.get("CORRAL_OTEL_CHECK") == "1" else sys.stderr
    try:
        stream.write(line)
        stream.flush()
    except Exception:  # a closed stream must not break the app
        pass


def _start():
    # type: () -> None
    if sys.version_info[:2] < _MINIMUM:
        _say(
            "unavailable",
            "Python %d.%d is older than the %d.%d the OpenTelemetry packages need"
            % (sys.version_info[0], sys.version_info[1], _MINIMUM[0], _MINIMUM[1]),
        )
        return
    import importlib

    corral_otel = importlib.import_module("_corral_otel")
    if os.environ.get("CORRAL_OTEL_CHECK") == "1":
        corral_otel.check()
        _say("ok", "Python %d.%d.%d" % sys.version_info[:3])
    else:
        corral_otel.start()


def _chain():
    # type: () -> None
    """Run the next ``sitecustomize`` on the path: ours must not hide the app's own."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        try:
            if os.path.abspath(entry or ".") == here:
                continue
        except Exception:  # odd path entries are skipped, not fatal
            continue
        candidate = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.isfile(candidate):
            with open(candidate) as source:
                code = compile(source.read(), candidate, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": candidate})
            return


try:
    _start()
except Exception as _error:  # never break the app: report and run untraced
    _say("unavailable", "%s: %s" % (type(_error).__name__, _error))
try:
    _chain()
except Exception as _error:  # the next sitecustomize's failure is its own
    sys.stderr.write("Error in sitecustomize %s: %s\n" % (type(_error).__name__, _error))
