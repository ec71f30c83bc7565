// A small C API over C++-only pieces of upstream that Python needs.
// Everything here is plain C so cffi can bind it; keep it thin.
#pragma once

#include "ggml-backend.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct llama_context;
struct ggml_tensor;

// Bytes held by a context, summed over every buffer type (CPU and devices):
// model weights, the context's own memory (KV cache and recurrent state)
// and the scheduler's compute buffers.
struct rq_memory_bytes {
    size_t model;
    size_t context;
    size_t compute;
};

void rq_context_memory(const struct llama_context * ctx, struct rq_memory_bytes * out);

// The same per buffer type, the context's memory split into KV cache (attention layers,
// sliding-window ones included) and recurrent state (the linear-attention/SSM layers of
// hybrid and recurrent models): up to cap entries into devs (the device the buffer type
// belongs to; NULL for host memory, a GPU's pinned host buffers included) and out;
// returns how many buffer types there are.
struct rq_memory_parts {
    size_t model;
    size_t kv;
    size_t recurrent;
    size_t compute;
};
size_t rq_context_memory_by_buft(const struct llama_context * ctx, ggml_backend_dev_t * devs,
                                 struct rq_memory_parts * out, size_t cap);

// Drop llama/ggml logs.  Python installs its own callback (rotorquant/_logging.py)
// and calls this at interpreter exit: a log line from a C destructor must not
// call into a dead interpreter.
void rq_log_silence(void);

// A context's abort switch: rq_abort_callback is the ggml_abort_callback installed with
// llama_set_abort_callback (data = the switch); while the switch is on, the running
// llama_decode stops between graph nodes and returns 2.  Python turns it on from the
// main thread on Ctrl-C while a worker thread decodes (rotorquant/llama.py).
struct rq_abort;
struct rq_abort * rq_abort_new(void);
void rq_abort_free(struct rq_abort * a);
void rq_abort_set(struct rq_abort * a, bool on);
bool rq_abort_callback(void * data);

// Log-probabilities of the model's distribution (log-softmax of raw logits, in double):
// of `token` (into *token_logprob) and of the top_n most likely tokens, best first (ids
// and values into the arrays, top_n <= 0 skips them).  Returns the number written to the
// arrays, or -1 for a bad argument.  In C because the core package has no numpy and a
// Python pass over a 150k vocabulary per token would cost more than the decode.
int rq_logprobs(const float * logits, int n_vocab, int token, int top_n, float * token_logprob,
                int * top_ids, float * top_logprobs);

// Activation capture for KV calibration: a ggml_backend_sched_eval_callback that keeps,
// as float32, every evaluated tensor named <prefix>-<layer> for the prefixes given
// (e.g. "Qcur,Kcur,Vcur": upstream names the post-RoPE Q/K and V so).  Within one graph
// the last tensor of a name wins (upstream names Kcur after reshape, norm and RoPE);
// graphs separated by rq_capture_next_graph are appended along dimension 2 (tokens).
// Decode one ubatch per graph (n_ubatch >= tokens per llama_decode call).
struct rq_capture;
struct rq_capture * rq_capture_new(const char * prefixes_csv);
void rq_capture_free(struct rq_capture * cap);
void rq_capture_next_graph(struct rq_capture * cap);
bool rq_capture_eval(struct ggml_tensor * t, bool ask, void * user_data);
// Floats held for `name` (0 if none); *data stays valid until the next capture or free.
size_t rq_capture_get(const struct rq_capture * cap, const char * name, const float ** data, int64_t ne[4]);

// Reads a KV policy file with the reader libllama uses (csrc/rotorquant/rq-kv-policy.cpp)
// and writes a JSON summary of it to buf, or the reason it was refused.  Returns the
// summary's length, or minus the reason's length; a result >= size means buf was too small.
int rq_kv_policy_describe(const char * path, char * buf, size_t size);

// Upstream's parameter fitting (common/fit.h, what llama-cli/llama-server do by default):
// sets the fields of mparams/cparams still at their defaults (n_gpu_layers, tensor_split,
// tensor overrides; n_ctx when 0, down to n_ctx_min) so that weights, KV cache and compute
// buffers fit each device's free memory minus margin_bytes.  tensor_split must hold
// llama_max_devices() floats and overrides llama_max_tensor_buft_overrides() entries
// (both written in place).  Returns 0 when it fits, 1 when nothing found fits, 2 on error.
struct llama_model_params;
struct llama_context_params;
struct llama_model_tensor_buft_override;
int rq_fit_params(const char * path_model, struct llama_model_params * mparams,
                  struct llama_context_params * cparams, float * tensor_split,
                  struct llama_model_tensor_buft_override * overrides, size_t margin_bytes, uint32_t n_ctx_min);

#ifdef __cplusplus
}
#endif
