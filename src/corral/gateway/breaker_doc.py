"""``python -m corral.gateway.breaker_doc > docs/breaker.md``: the breaker's drawing and tables,
generated from its transition table (a module of its own: the breaker itself may be compiled,
and a compiled module cannot be run with ``-m``)."""

import sys

from corral.gateway.breaker import render_markdown

if __name__ == "__main__":
    sys.stdout.write(render_markdown())
