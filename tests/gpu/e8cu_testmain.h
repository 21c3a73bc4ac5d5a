/* e8cu_testmain.h: the shared start of the GPU test programs (tests/gpu/test_*.c). */
#ifndef E8CU_TESTMAIN_H
#define E8CU_TESTMAIN_H

/* Sets E8CU_GPU_ENTROPY=1 (the GPU entropy stage, the library's default) unless the caller set
 * it (0 = the host packer; test_e8cu_codec also covers that path itself), reads GPU_QUICK (a reduced set, for
 * compute-sanitizer) and checks that a CUDA device exists. Returns 1 for GPU_QUICK, 0 otherwise,
 * or -1 after saying on stderr, under the program name `prog`, that there is no device. */
int e8cu_test_start(const char *prog);

#endif
