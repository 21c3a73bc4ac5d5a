/* e8cu_testmain.c: see e8cu_testmain.h. */
#include <stdio.h>
#include <stdlib.h>
#include <cuda_runtime.h>

#include "tests/gpu/e8cu_testmain.h"

int e8cu_test_start(const char *prog)
{
    setenv("E8CU_GPU_ENTROPY", "1", 0);
    const char *q = getenv("GPU_QUICK");
    int quick = q && *q && *q != '0';
    int dev = 0;
    if (cudaGetDeviceCount(&dev) != cudaSuccess || dev == 0) {
        fprintf(stderr, "%s: no CUDA device: this test needs an NVIDIA GPU (make test-gpu)\n", prog);
        return -1;
    }
    return quick;
}
