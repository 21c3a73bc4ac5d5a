/* e8cu_test_producer.cu: a "producer" for the stream/event contract test: a kernel that waits
 * on the GPU for a while (spinning on the global timer), then writes the KV tensor, as an
 * attention kernel finishing late would. */
#include <stdint.h>
#include <cuda_runtime.h>

__global__ void e8cu_test_late_copy_kernel(unsigned char *dst, const unsigned char *src, size_t bytes,
                                           unsigned long long delay_ns)
{
    unsigned long long t0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    for (;;) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t - t0 >= delay_ns) break;
        __nanosleep(1000);
    }
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < bytes; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

/* Enqueues on stream: wait delay_ns on the device, then copy bytes src -> dst (device). */
extern "C" int e8cu_test_late_copy(void *dst, const void *src, size_t bytes, unsigned long long delay_ns,
                                   cudaStream_t stream)
{
    e8cu_test_late_copy_kernel<<<64, 256, 0, stream>>>((unsigned char *)dst, (const unsigned char *)src, bytes,
                                                        delay_ns);
    return (int)cudaGetLastError();
}
