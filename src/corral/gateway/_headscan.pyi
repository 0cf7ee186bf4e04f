# The compiled header scan (_headscan.c); built into the compiled overlay by
# scripts/build_compiled.py, absent when it was not built (proxy then uses its regex scan).

def scan(
    head: bytes, names: tuple[bytes, ...], caseless: int, single: int, cut: int
) -> tuple[dict[bytes, bytes], bool, bytes | None]: ...
def head_end(data: bytes) -> int: ...
