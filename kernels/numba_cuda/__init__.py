"""The numba_cuda flavour: @cuda.jit kernels on CuPy arrays (through the CUDA array interface).

bodies.py           the @cuda.jit kernels: index logic only (testable under NUMBA_ENABLE_CUDASIM=1):
                    conv (im2col/col2im) and pooling on volumes (2-D ops at depth 1), the fused
                    conv-ReLU-pool, ReLU, softmax cross-entropy, optimizer updates
bodies_resample.py  adaptive average pooling and interpolation (gathers)
bodies_norm.py      normalisation statistics, forward and backward (a block per slice), leaky
                    ReLU and GELU
launchers.py        allocate, size the grid, launch on CuPy's stream; written against xp, no CuPy
table.py            KERNELS = {**cupy_cuda.KERNELS, **own}: the table engine/backend.py loads

`own` (launchers.KERNELS) may be partial: any other name runs cupy_cuda's kernel (or, for an
optional name cupy_cuda lacks too, its composition). The pooling bodies share bodies.offer_max and
bodies.window_of.

This package's __init__ imports nothing, so the bodies and launchers import on a machine without
CuPy (CI runs them under the simulator); only table.py needs CuPy, and only the backend imports it.
"""
