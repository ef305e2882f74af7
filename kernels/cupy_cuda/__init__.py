"""The cupy_cuda flavour: CUDA C ElementwiseKernels compiled by CuPy, GEMMs through cuBLAS.

sources.py    the kernel sources as plain data (no CuPy: the tests build them with g++ too)
launchers.py  allocate outputs, call the kernels; written against xp, no CuPy import
table.py      imports CuPy and builds KERNELS = {**numpy_cpu.GENERIC, **own}: what engine/backend.py loads

This package's __init__ imports nothing, so sources and launchers import on a machine without CuPy.
"""
