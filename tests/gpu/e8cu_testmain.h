/* e8cu_testmain.h: the shared start of the GPU test programs (tests/gpu/test_*.c). */
#ifndef E8CU_TESTMAIN_H
#define E8CU_TESTMAIN_H

/* Opts in to the GPU entropy stage (codec/cuda/e8cu_ctx.c: it is opt-in) unless the caller set
 * E8CU_GPU_ENTROPY itself (0 = the host packer), reads GPU_QUICK (a reduced set, for
 * compute-sanitizer) and checks that a CUDA device exists. Returns 1 for GPU_QUICK, 0 otherwise,
 * or -1 after saying on stderr, under the program name `prog`, that there is no device. */
int e8cu_test_start(const char *prog);

#endif
