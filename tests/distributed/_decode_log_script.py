"""Run under mpiexec by the tests: `medgrad train` (argv[2:]) with every DICOM pixel decode
logged to argv[1].<rank> (one path a line), to prove a rank decodes only its patients' files."""

from __future__ import annotations

import sys

from engine.data import dicom

if __name__ == "__main__":
    from mpi4py import MPI

    log = open(f"{sys.argv[1]}.{MPI.COMM_WORLD.Get_rank()}", "w")  # noqa: SIM115 - to the end
    real = dicom._pixels

    def logged(path, *args, **kwargs):
        print(path, file=log, flush=True)
        return real(path, *args, **kwargs)

    dicom._pixels = logged  # the one place every pixel decode goes through
    from engine.cli import main

    sys.exit(main(sys.argv[2:]))
