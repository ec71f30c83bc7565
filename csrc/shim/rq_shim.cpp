#include "rq_shim.h"

#include "llama.h"
#include "llama-ext.h"  // upstream's staging C++ API: llama_get_memory_breakdown

void rq_context_memory(const struct llama_context * ctx, struct rq_memory_bytes * out) {
    out->model = out->context = out->compute = 0;
    if (ctx == nullptr) {
        return;
    }
    for (const auto & [buft, mb] : llama_get_memory_breakdown(ctx)) {
        (void) buft;
        out->model   += mb.model;
        out->context += mb.context;
        out->compute += mb.compute;
    }
}

static void rq_log_drop(enum ggml_log_level, const char *, void *) {}

void rq_log_silence(void) {
    llama_log_set(rq_log_drop, nullptr);
}
