"""Run under mpiexec by the tests: fit a tiny float64 CNN on uneven patient shards; rank 0
writes the final weights and history to argv[1] (.npz). Not collected by pytest."""

from __future__ import annotations

import json
import sys

import numpy as np

from tests.distributed.cases import fit_case

if __name__ == "__main__":
    from engine import distributed

    options = json.loads(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60
    comm = distributed.init(options.get("device", "cpu"), timeout=timeout)
    with distributed.fail_together(comm):
        model, history = fit_case(comm, **options)
        if comm.rank == 0:
            np.savez(sys.argv[1], history=json.dumps(history.epochs), **model.state_dict())
