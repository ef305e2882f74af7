"""Fuzz worker: reads file paths from stdin, one per line, calls engine.data.dicom.read_image on
each and answers one JSON line per path. Runs under RLIMIT_AS (its start-up size + a budget), so
a reader that trusts a length field hits MemoryError here instead of swapping the machine."""

from __future__ import annotations

import json
import sys
import time


def _vm_size() -> int:
    """This process's virtual size in bytes (Linux), or 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _chain(exc: BaseException) -> list[BaseException]:
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def main() -> None:
    budget = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 30
    import pydicom.pixels  # noqa: F401

    from engine.data import dicom  # noqa: F401 - import everything before measuring
    from engine.data.dicom import read_image
    from engine.errors import DicomReadError

    try:
        import resource

        base = _vm_size()
        if base:
            resource.setrlimit(resource.RLIMIT_AS, (base + budget, base + budget))
    except (ImportError, ValueError, OSError):
        pass
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        path = line.rstrip("\n")
        start = time.perf_counter()
        result = {"status": "ok"}
        try:
            read_image(path)
        except DicomReadError as exc:
            result = {"status": "error", "reason": getattr(exc, "reason", None)}
            if any(isinstance(e, MemoryError) for e in _chain(exc)):
                # Caught, but only after the reader asked for more than the budget.
                result = {
                    "status": "memory",
                    "type": "MemoryError (inside DicomReadError)",
                    "message": str(exc)[:300],
                }
        except BaseException as exc:  # noqa: BLE001 - the oracle: anything else is an escape
            result = {
                "status": "escape",
                "type": f"{type(exc).__module__}.{type(exc).__name__}",
                "message": str(exc)[:300],
            }
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
        result["seconds"] = time.perf_counter() - start
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
