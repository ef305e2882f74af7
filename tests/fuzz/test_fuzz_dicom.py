"""Mutated DICOM files fed to engine.data.dicom.read_image: only DicomReadError may come out,
each input within 2 s and 1 GiB (RELIABILITY D10). The fast tier (~2,000 inputs) runs in
`make test`; the long tier runs with `pytest -m fuzz_long tests/fuzz` (FUZZ_EXAMPLES to size it)."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.harness import Worker, load_seeds, mutants

pytest.importorskip("engine.data.dicom")

FAST_EXAMPLES = 2000
LONG_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100000"))


@pytest.fixture(scope="module")
def seeds():
    return load_seeds()


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    w.start()
    yield w
    w.stop()


def _fuzz(worker, seeds, scratch, examples: int, derandomize: bool) -> Counter:
    """Run `examples` mutants through the worker; fail (and let hypothesis shrink) on the first
    escape, timeout, crash or over-budget allocation. Returns counts of outcomes."""
    outcomes: Counter = Counter()
    path = scratch / "mutant.dcm"

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=mutants(seeds))
    def run(case):
        name, data, done = case
        path.write_bytes(data)
        result = worker.read(path)
        outcomes[result["status"]] += 1
        outcomes[f"reason:{result.get('reason')}"] += result["status"] == "error"
        assert result["status"] in ("ok", "error"), (name, done, result)

    run()
    return outcomes


def test_seeds_read_cleanly(worker, seeds, tmp_path_factory):
    """The oracle is meaningful: every unmutated image seed reads; rtplan (no pixels) is refused
    with the project error."""
    assert len(seeds) >= 6
    scratch_dir = tmp_path_factory.mktemp("seeds")
    statuses = {}
    for seed in seeds:
        path = scratch_dir / seed.name
        path.write_bytes(seed.data)
        statuses[seed.name] = worker.read(path)["status"]
    assert statuses.pop("rtplan.dcm") == "error"
    assert set(statuses.values()) == {"ok"}, statuses


def test_fuzz_fast_tier(worker, seeds, tmp_path_factory):
    outcomes = _fuzz(worker, seeds, tmp_path_factory.mktemp("fuzz"), FAST_EXAMPLES, True)
    runs = outcomes["ok"] + outcomes["error"]
    assert runs >= 0.9 * FAST_EXAMPLES, outcomes
    assert outcomes["error"] > 0.2 * runs  # the mutations do break files, not just pixels
    assert worker.restarts == 0


@pytest.mark.fuzz_long
def test_fuzz_long_tier(worker, seeds, tmp_path_factory):
    outcomes = _fuzz(worker, seeds, tmp_path_factory.mktemp("fuzz"), LONG_EXAMPLES, False)
    print(f"\nlong fuzz tier: {sum(outcomes[k] for k in ('ok', 'error'))} inputs, {dict(outcomes)}")
    assert worker.restarts == 0
