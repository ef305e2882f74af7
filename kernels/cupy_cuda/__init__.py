"""The cupy_cuda flavour: CUDA C ElementwiseKernels compiled by CuPy, GEMMs through cuBLAS.

sources.py    the kernel sources as plain data (no CuPy: the tests build them with g++ too)
launchers.py  allocate outputs, call the kernels; written against xp, no CuPy import
table.py      imports CuPy and builds KERNELS = {**numpy_cpu.GENERIC, **own}: what engine/backend.py loads

`own` (launchers.KERNELS) may be partial: a required name without a launcher here runs numpy_cpu's
xp-generic kernel on CuPy arrays, an optional one its composition on this flavour's primitives
(kernels.coverage() reports which). The pooling sources share one tie rule, MAX_TIE_RULE.

This package's __init__ imports nothing, so sources and launchers import on a machine without CuPy.
"""
