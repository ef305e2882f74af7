"""Mutation fuzzing of the DICOM reader (RELIABILITY D10): seeds from pydicom's bundled files,
hypothesis strategies for bit flips, hostile length fields, VR changes, truncation, element
duplication and byte insertion/deletion, and a long-lived worker process that reads each mutant
under a memory limit and a per-input timeout (restarted after any timeout or crash)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
TIME_LIMIT_S = 2.0  # per input
MEMORY_BUDGET = 1 << 30  # RLIMIT_AS above the worker's start-up size
HOSTILE_32 = (0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFF, 0x10000)
HOSTILE_16 = (0, 1, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
VRS = (b"SQ", b"UN", b"OB", b"OW", b"UL", b"US", b"SS", b"FD", b"AT", b"UT", b"DS", b"XX", b"\0\0")
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
SEED_NAMES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_small_odd.dcm",
    "rtplan.dcm",
    "image_dfl.dcm",
)


@dataclass(frozen=True)
class Element:
    """Byte positions of one top-level element header in a seed file."""

    start: int  # first byte of the tag
    end: int  # one past the value (== start of the next element for defined lengths)
    vr_at: int | None  # explicit VR: where the two VR bytes are
    length_at: int  # where the length field is
    length_size: int  # 2 or 4 bytes


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    elements: tuple[Element, ...]
    pixels_at: int  # where Pixel Data starts (flips before it hit the header), else len(data)


def _elements(path: Path) -> tuple[tuple[Element, ...], int]:
    """Header positions of the file meta and top-level elements, from pydicom's raw elements
    (value_tell is where each value starts in the file); deflated bodies are skipped."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    size = path.stat().st_size
    deflated = str(ds.file_meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.1.99"
    out, pixels_at = [], size
    groups = [(ds.file_meta, False)] + ([] if deflated else [(ds, ds.is_implicit_VR)])
    for dataset, implicit in groups:
        for raw in dataset._dict.values():
            tell = getattr(raw, "value_tell", None)
            if tell is None:
                continue
            vr = str(getattr(raw, "VR", "") or "")
            if implicit:
                start, vr_at, length_at, length_size = tell - 8, None, tell - 4, 4
            elif vr in LONG_VRS:
                start, vr_at, length_at, length_size = tell - 12, tell - 8, tell - 4, 4
            else:
                start, vr_at, length_at, length_size = tell - 8, tell - 4, tell - 2, 2
            length = raw.length if raw.length != 0xFFFFFFFF else 0
            out.append(Element(start, min(tell + length, size), vr_at, length_at, length_size))
            if int(raw.tag) == 0x7FE00010:
                pixels_at = tell
    return tuple(sorted(out, key=lambda e: e.start)), pixels_at


def load_seeds(extra: list[Path] = ()) -> list[Seed]:
    """The bundled seed files (local pydicom data only) plus any extra files."""
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    paths = [folder / name for name in SEED_NAMES if (folder / name).exists()] + list(extra)
    seeds = []
    for p in paths:
        elements, pixels_at = _elements(p)
        seeds.append(Seed(p.name, p.read_bytes(), elements, pixels_at))
    return seeds


# ------------------------------------------------------------------------------- mutations


def _put(data: bytearray, at: int, value: int, size: int) -> None:
    if 0 <= at and at + size <= len(data):
        data[at : at + size] = (value % (1 << (8 * size))).to_bytes(size, "little")


@st.composite
def mutants(draw, seeds: list[Seed]) -> tuple[str, bytes, list[str]]:
    """-> (seed name, mutated bytes, list of what was done): one to three mutations."""
    seed = draw(st.sampled_from(seeds))
    data = bytearray(seed.data)
    done = []
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        kind = draw(
            st.sampled_from(
                [
                    "flip",
                    "flip",
                    "overwrite",
                    "length",
                    "length",
                    "vr",
                    "truncate",
                    "duplicate",
                    "splice",
                ]
            )
        )
        elements = [e for e in seed.elements if e.end <= len(data)]
        if kind in ("length", "vr", "duplicate") and not elements:
            kind = "flip"
        if kind == "flip":
            # Mostly in the header: flips in pixel values only change the picture.
            header = draw(st.booleans()) or draw(st.booleans())
            hi = min(seed.pixels_at, len(data)) if header else len(data)
            at = draw(st.integers(0, max(hi - 1, 0)))
            bit = draw(st.integers(0, 7))
            data[at] ^= 1 << bit
            done.append(f"flip byte {at} bit {bit}")
        elif kind == "overwrite":
            at = draw(st.integers(0, len(data) - 1))
            value = draw(st.sampled_from(HOSTILE_32) | st.integers(0, 2**32 - 1))
            _put(data, at, value, 4)
            done.append(f"overwrite {at} with {value:#x}")
        elif kind == "length":
            e = draw(st.sampled_from(elements))
            pool = HOSTILE_32 if e.length_size == 4 else HOSTILE_16
            value = draw(st.sampled_from(pool) | st.integers(0, 2 ** (8 * e.length_size) - 1))
            _put(data, e.length_at, value, e.length_size)
            done.append(f"length at {e.length_at} = {value:#x}")
        elif kind == "vr":
            explicit = [e for e in elements if e.vr_at is not None]
            if explicit:
                e = draw(st.sampled_from(explicit))
                vr = draw(st.sampled_from(VRS) | st.binary(min_size=2, max_size=2))
                data[e.vr_at : e.vr_at + 2] = vr
                done.append(f"VR at {e.vr_at} = {vr!r}")
        elif kind == "truncate":
            near = draw(st.booleans()) and elements
            if near:
                e = draw(st.sampled_from(elements))
                at = max(0, min(len(data), e.start + draw(st.integers(-16, 16))))
            else:
                at = draw(st.integers(0, len(data)))
            del data[at:]
            done.append(f"truncate at {at}")
        elif kind == "duplicate":
            e = draw(st.sampled_from(elements))
            chunk = bytes(data[e.start : min(e.end, e.start + 4096)])
            to = draw(st.sampled_from(elements)).start
            data[to:to] = chunk
            done.append(f"duplicate {e.start}..{e.start + len(chunk)} at {to}")
        else:  # splice: delete or insert a few bytes, shifting everything after
            at = draw(st.integers(0, len(data)))
            if draw(st.booleans()):
                n = draw(st.integers(1, 16))
                del data[at : at + n]
                done.append(f"delete {n} at {at}")
            else:
                blob = draw(st.binary(min_size=1, max_size=16))
                data[at:at] = blob
                done.append(f"insert {len(blob)} at {at}")
    return seed.name, bytes(data), done


# ------------------------------------------------------------------------------- the worker


class Worker:
    """A long-lived `python tests/fuzz/worker.py` answering one JSON line per path."""

    def __init__(self, budget: int = MEMORY_BUDGET):
        self.budget = budget
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("worker.py")), str(self.budget)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=env,
        )
        ready = self._read(timeout=60)
        if ready is None or not ready.get("ready"):
            raise RuntimeError("fuzz worker did not start")

    def _read(self, timeout: float) -> dict | None:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return None
            line = self.proc.stdout.readline()
        finally:
            sel.close()
        return json.loads(line) if line else None

    def read(self, path: Path, timeout: float = TIME_LIMIT_S) -> dict:
        """Result of read_image(path) in the worker: status ok | error | escape | memory, or
        timeout / crash (the worker is then restarted)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        result = self._read(timeout)
        if result is None:
            code = self.proc.poll()
            self.stop()
            self.restarts += 1
            return {"status": "timeout" if code is None else "crash", "exit": code}
        return result

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                stream.close()
            self.proc = None
