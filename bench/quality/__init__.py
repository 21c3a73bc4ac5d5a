"""e8kv quality benchmark (issue 3): see README.md in this directory.

BLAS/OpenMP pools are limited to one thread unless the caller says otherwise: on a few shared
cores, spinning worker threads cost 4x the CPU of a single thread for the same model run.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
