// A small C API over C++-only pieces of upstream that Python needs.
// Everything here is plain C so cffi can bind it; keep it thin.
#pragma once

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct llama_context;

// Bytes held by a context, summed over every buffer type (CPU and devices):
// model weights, the context's own memory (KV cache and recurrent state)
// and the scheduler's compute buffers.
struct rq_memory_bytes {
    size_t model;
    size_t context;
    size_t compute;
};

void rq_context_memory(const struct llama_context * ctx, struct rq_memory_bytes * out);

// Drop llama/ggml logs.  Python installs its own callback (rotorquant/_logging.py)
// and calls this at interpreter exit: a log line from a C destructor must not
// call into a dead interpreter.
void rq_log_silence(void);

#ifdef __cplusplus
}
#endif
