/*
 * The subset of llama.h / ggml.h / ggml-backend.h that rotorquant's Python layer
 * calls, in cffi's declaration language.  This is *not* a copy of the headers:
 * the cffi extension is compiled in API mode against the real headers, so
 *   - struct fields listed here are checked, and `...;` leaves the rest (and the
 *     layout) to the compiler;
 *   - enum values written as `...` are taken from the headers at build time;
 *   - a declaration that drifted from upstream fails the build, not the user.
 * Add what a new feature needs; never retype a value.
 */

/* ---- ggml ---------------------------------------------------------------- */
enum ggml_type {
    GGML_TYPE_F32 = ..., GGML_TYPE_F16 = ..., GGML_TYPE_BF16 = ...,
    GGML_TYPE_Q8_0 = ..., GGML_TYPE_Q4_0 = ..., GGML_TYPE_Q4_1 = ...,
    GGML_TYPE_IQ4_NL = ..., GGML_TYPE_Q5_0 = ..., GGML_TYPE_Q5_1 = ...,
    GGML_TYPE_PLANAR3 = ..., GGML_TYPE_ISO3 = ..., GGML_TYPE_PLANAR4 = ..., GGML_TYPE_ISO4 = ...,
    GGML_TYPE_PLANAR_F32 = ..., GGML_TYPE_ISO_F32 = ..., GGML_TYPE_I32 = ..., GGML_TYPE_I64 = ...,
    GGML_TYPE_COUNT = ...,
    ...
};

enum ggml_log_level {
    GGML_LOG_LEVEL_NONE = ..., GGML_LOG_LEVEL_DEBUG = ..., GGML_LOG_LEVEL_INFO = ...,
    GGML_LOG_LEVEL_WARN = ..., GGML_LOG_LEVEL_ERROR = ..., GGML_LOG_LEVEL_CONT = ...,
    ...
};

typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data);

const char * ggml_type_name(enum ggml_type type);
size_t       ggml_type_size(enum ggml_type type);
int64_t      ggml_blck_size(enum ggml_type type);
bool         ggml_is_quantized(enum ggml_type type);

typedef struct ggml_backend_reg * ggml_backend_reg_t;
typedef struct ggml_backend_device * ggml_backend_dev_t;
size_t             ggml_backend_reg_count(void);
ggml_backend_reg_t ggml_backend_reg_get(size_t index);
const char *       ggml_backend_reg_name(ggml_backend_reg_t reg);
size_t             ggml_backend_dev_count(void);
ggml_backend_dev_t ggml_backend_dev_get(size_t index);
const char *       ggml_backend_dev_name(ggml_backend_dev_t device);
const char *       ggml_backend_dev_description(ggml_backend_dev_t device);
ggml_backend_reg_t ggml_backend_dev_backend_reg(ggml_backend_dev_t device);
ggml_backend_dev_t ggml_backend_dev_by_name(const char * name);
typedef struct ggml_backend_buffer_type * ggml_backend_buffer_type_t;
ggml_backend_buffer_type_t ggml_backend_dev_buffer_type(ggml_backend_dev_t device);
enum ggml_backend_dev_type {
    GGML_BACKEND_DEVICE_TYPE_CPU = ..., GGML_BACKEND_DEVICE_TYPE_GPU = ...,
    GGML_BACKEND_DEVICE_TYPE_IGPU = ..., GGML_BACKEND_DEVICE_TYPE_ACCEL = ...,
    ...
};
enum ggml_backend_dev_type ggml_backend_dev_type(ggml_backend_dev_t device);
ggml_backend_reg_t ggml_backend_reg_by_name(const char * name);
size_t             ggml_backend_reg_dev_count(ggml_backend_reg_t reg);
ggml_backend_dev_t ggml_backend_reg_dev_get(ggml_backend_reg_t reg, size_t index);
void *             ggml_backend_reg_get_proc_address(ggml_backend_reg_t reg, const char * name);
void               ggml_backend_register(ggml_backend_reg_t reg);
void               ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total);
ggml_backend_dev_t ggml_backend_dev_by_type(enum ggml_backend_dev_type type);

/* ggml-rpc.h: the protocol version this build speaks (its functions are reached through
   the "RPC" backend registry, as llama.cpp's common code does) */
#define RPC_PROTO_MAJOR_VERSION ...
#define RPC_PROTO_MINOR_VERSION ...

/* ---- llama: types -------------------------------------------------------- */
#define LLAMA_DEFAULT_SEED ...

typedef int32_t llama_pos;
typedef int32_t llama_token;
typedef int32_t llama_seq_id;

struct llama_model;
struct llama_context;
struct llama_vocab;
struct llama_sampler;
typedef struct llama_memory_i * llama_memory_t;

enum llama_flash_attn_type {
    LLAMA_FLASH_ATTN_TYPE_AUTO = ..., LLAMA_FLASH_ATTN_TYPE_DISABLED = ...,
    LLAMA_FLASH_ATTN_TYPE_ENABLED = ...,
    ...
};

typedef struct llama_batch {
    int32_t n_tokens;
    llama_token * token;
    float * embd;
    llama_pos * pos;
    int32_t * n_seq_id;
    llama_seq_id ** seq_id;
    int8_t * logits;
} llama_batch;

enum llama_split_mode {
    LLAMA_SPLIT_MODE_NONE = ..., LLAMA_SPLIT_MODE_LAYER = ..., LLAMA_SPLIT_MODE_ROW = ...,
    LLAMA_SPLIT_MODE_TENSOR = ..., ...
};
enum llama_load_mode {
    LLAMA_LOAD_MODE_AUTO = ..., LLAMA_LOAD_MODE_NONE = ..., LLAMA_LOAD_MODE_MMAP = ...,
    LLAMA_LOAD_MODE_MLOCK = ..., LLAMA_LOAD_MODE_MMAP_MLOCK = ..., ...
};
struct llama_model_tensor_buft_override {
    const char * pattern;
    ggml_backend_buffer_type_t buft;
};

struct llama_model_params {
    ggml_backend_dev_t * devices;
    const struct llama_model_tensor_buft_override * tensor_buft_overrides;
    int32_t n_gpu_layers;
    enum llama_split_mode split_mode;
    enum llama_load_mode load_mode;
    int32_t main_gpu;
    const float * tensor_split;
    bool vocab_only;
    bool no_alloc;
    ...;
};
size_t llama_max_devices(void);
size_t llama_max_tensor_buft_overrides(void);

struct ggml_tensor;
typedef bool (*ggml_backend_sched_eval_callback)(struct ggml_tensor * t, bool ask, void * user_data);

enum llama_pooling_type {
    LLAMA_POOLING_TYPE_UNSPECIFIED = ..., LLAMA_POOLING_TYPE_NONE = ..., LLAMA_POOLING_TYPE_MEAN = ...,
    LLAMA_POOLING_TYPE_CLS = ..., LLAMA_POOLING_TYPE_LAST = ..., LLAMA_POOLING_TYPE_RANK = ...,
    ...
};

struct llama_context_params {
    uint32_t n_ctx;
    uint32_t n_batch;
    uint32_t n_ubatch;
    uint32_t n_seq_max;
    int32_t  n_threads;
    int32_t  n_threads_batch;
    enum llama_flash_attn_type flash_attn_type;
    enum ggml_type type_k;
    enum ggml_type type_v;
    bool no_perf;
    ggml_backend_sched_eval_callback cb_eval;
    void * cb_eval_user_data;
    const char * kv_policy;
    enum llama_pooling_type pooling_type;
    bool embeddings;
    ...;
};

struct llama_sampler_chain_params {
    bool no_perf;
    ...;
};

/* ---- llama: functions ---------------------------------------------------- */
void llama_backend_init(void);
const char * llama_print_system_info(void);
void llama_log_set(ggml_log_callback log_callback, void * user_data);

struct llama_model_params   llama_model_default_params(void);
struct llama_context_params llama_context_default_params(void);
struct llama_sampler_chain_params llama_sampler_chain_default_params(void);

struct llama_model * llama_model_load_from_file(const char * path_model, struct llama_model_params params);
void llama_model_free(struct llama_model * model);
struct llama_context * llama_init_from_model(struct llama_model * model, struct llama_context_params params);
void llama_free(struct llama_context * ctx);

uint32_t llama_n_ctx(const struct llama_context * ctx);
uint32_t llama_n_batch(const struct llama_context * ctx);
llama_memory_t llama_get_memory(const struct llama_context * ctx);
void llama_memory_clear(llama_memory_t mem, bool data);
bool llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1);
llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id);

const struct llama_vocab * llama_model_get_vocab(const struct llama_model * model);
bool llama_model_is_recurrent(const struct llama_model * model);
bool llama_model_is_hybrid(const struct llama_model * model);
int32_t  llama_model_n_ctx_train(const struct llama_model * model);
int32_t  llama_model_n_layer(const struct llama_model * model);
int32_t  llama_model_n_embd(const struct llama_model * model);
uint64_t llama_model_size(const struct llama_model * model);
uint64_t llama_model_n_params(const struct llama_model * model);
int32_t  llama_model_desc(const struct llama_model * model, char * buf, size_t buf_size);
int32_t  llama_model_meta_count(const struct llama_model * model);
int32_t  llama_model_meta_key_by_index(const struct llama_model * model, int32_t i, char * buf, size_t buf_size);
int32_t  llama_model_meta_val_str_by_index(const struct llama_model * model, int32_t i, char * buf, size_t buf_size);

int32_t llama_vocab_n_tokens(const struct llama_vocab * vocab);
bool    llama_vocab_is_eog(const struct llama_vocab * vocab, llama_token token);
llama_token llama_vocab_bos(const struct llama_vocab * vocab);
bool    llama_vocab_get_add_bos(const struct llama_vocab * vocab);
int32_t llama_tokenize(const struct llama_vocab * vocab, const char * text, int32_t text_len,
                       llama_token * tokens, int32_t n_tokens_max, bool add_special, bool parse_special);
int32_t llama_token_to_piece(const struct llama_vocab * vocab, llama_token token, char * buf,
                             int32_t length, int32_t lstrip, bool special);
int32_t llama_detokenize(const struct llama_vocab * vocab, const llama_token * tokens, int32_t n_tokens,
                         char * text, int32_t text_len_max, bool remove_special, bool unparse_special);

typedef bool (*ggml_abort_callback)(void * data);
void llama_set_abort_callback(struct llama_context * ctx, ggml_abort_callback abort_callback, void * abort_callback_data);
struct llama_batch llama_batch_get_one(llama_token * tokens, int32_t n_tokens);
int32_t llama_decode(struct llama_context * ctx, struct llama_batch batch);
float * llama_get_logits_ith(struct llama_context * ctx, int32_t i);
float * llama_get_logits(struct llama_context * ctx);
float * llama_get_embeddings_ith(struct llama_context * ctx, int32_t i);
float * llama_get_embeddings_seq(struct llama_context * ctx, llama_seq_id seq_id);
enum llama_pooling_type llama_pooling_type(const struct llama_context * ctx);
uint32_t llama_n_ubatch(const struct llama_context * ctx);
size_t llama_state_get_size(struct llama_context * ctx);
size_t llama_state_get_data(struct llama_context * ctx, uint8_t * dst, size_t size);
size_t llama_state_set_data(struct llama_context * ctx, const uint8_t * src, size_t size);
size_t llama_state_seq_get_size(struct llama_context * ctx, llama_seq_id seq_id);
size_t llama_state_seq_get_data(struct llama_context * ctx, uint8_t * dst, size_t size, llama_seq_id seq_id);
size_t llama_state_seq_set_data(struct llama_context * ctx, const uint8_t * src, size_t size, llama_seq_id dest_seq_id);
#define LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY ...
typedef uint32_t llama_state_seq_flags;
size_t llama_state_seq_get_size_ext(struct llama_context * ctx, llama_seq_id seq_id, llama_state_seq_flags flags);
size_t llama_state_seq_get_data_ext(struct llama_context * ctx, uint8_t * dst, size_t size, llama_seq_id seq_id,
                                    llama_state_seq_flags flags);
size_t llama_state_seq_set_data_ext(struct llama_context * ctx, const uint8_t * src, size_t size,
                                    llama_seq_id dest_seq_id, llama_state_seq_flags flags);
uint32_t llama_n_seq_max(const struct llama_context * ctx);

struct llama_sampler * llama_sampler_chain_init(struct llama_sampler_chain_params params);
void llama_sampler_chain_add(struct llama_sampler * chain, struct llama_sampler * smpl);
struct llama_sampler * llama_sampler_init_greedy(void);
struct llama_sampler * llama_sampler_init_dist(uint32_t seed);
struct llama_sampler * llama_sampler_init_top_k(int32_t k);
struct llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_min_p(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_temp(float t);
struct llama_sampler * llama_sampler_init_typical(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_xtc(float p, float t, size_t min_keep, uint32_t seed);
struct llama_sampler * llama_sampler_init_top_n_sigma(float n);
struct llama_sampler * llama_sampler_init_mirostat(int32_t n_vocab, uint32_t seed, float tau, float eta, int32_t m);
struct llama_sampler * llama_sampler_init_mirostat_v2(uint32_t seed, float tau, float eta);
struct llama_sampler * llama_sampler_init_grammar(const struct llama_vocab * vocab, const char * grammar_str,
                                                  const char * grammar_root);
struct llama_sampler * llama_sampler_init_grammar_lazy_patterns(const struct llama_vocab * vocab,
                                                                const char * grammar_str, const char * grammar_root,
                                                                const char ** trigger_patterns, size_t num_trigger_patterns,
                                                                const llama_token * trigger_tokens, size_t num_trigger_tokens);
struct llama_sampler * llama_sampler_init_penalties(int32_t n_vocab, int32_t penalty_last_n, float penalty_repeat,
                                                    float penalty_freq, float penalty_present);
struct llama_sampler * llama_sampler_init_dry(const struct llama_vocab * vocab, float dry_multiplier, float dry_base,
                                              int32_t dry_allowed_length, int32_t dry_penalty_last_n,
                                              const char ** seq_breakers, size_t num_breakers);
typedef struct llama_logit_bias {
    llama_token token;
    float bias;
} llama_logit_bias;
struct llama_sampler * llama_sampler_init_logit_bias(int32_t n_vocab, int32_t n_logit_bias,
                                                     const llama_logit_bias * logit_bias);
void llama_sampler_accept(struct llama_sampler * smpl, llama_token token);
llama_token llama_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx, int32_t idx);
void llama_sampler_free(struct llama_sampler * smpl);

struct llama_perf_context_data {
    double t_start_ms;
    double t_load_ms;
    double t_p_eval_ms;
    double t_eval_ms;
    int32_t n_p_eval;
    int32_t n_eval;
    ...;
};
struct llama_perf_context_data llama_perf_context(const struct llama_context * ctx);
void llama_perf_context_reset(struct llama_context * ctx);

/* ---- rotorquant codecs and CPU kernels (csrc/rotorquant), for tests ------ */
#define RQ_QK ...
bool rq_is_cache_type(enum ggml_type type);
bool rq_is_kv_only_type(enum ggml_type type);
enum ggml_type rq_rotated_type(enum ggml_type type);
size_t rq_quantize(enum ggml_type type, const float * src, void * dst, int64_t nrows, int64_t n_per_row);
typedef void (*ggml_to_float_t)(const void * x, float * y, int64_t k);
struct ggml_type_traits {
    const char * type_name;
    int64_t blck_size;
    size_t type_size;
    bool is_quantized;
    ggml_to_float_t to_float;
    ...;
};
const struct ggml_type_traits * ggml_get_type_traits(enum ggml_type type);
void rq_rotate_row_planar(const float * x, void * y, int64_t k);
void rq_rotate_row_iso(const float * x, void * y, int64_t k);
void rq_vec_dot_rq3(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
void rq_vec_dot_rq4(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
void rq_vec_dot_rq3_ref(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
void rq_vec_dot_rq4_ref(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
void rq_vec_mad_rq3(int n, float * acc, const void * v, float scale);
void rq_vec_mad_rq4(int n, float * acc, const void * v, float scale);
void rq_vec_mad_rq3_ref(int n, float * acc, const void * v, float scale);
void rq_vec_mad_rq4_ref(int n, float * acc, const void * v, float scale);

/* ---- a minimal ggml graph API: lets tests run single ops ------------------ */
struct ggml_init_params {
    size_t mem_size;
    void * mem_buffer;
    bool no_alloc;
};
struct ggml_context;
struct ggml_cgraph;
struct ggml_tensor {
    enum ggml_type type;
    int64_t ne[4];
    size_t nb[4];
    void * data;
    ...;
};
enum ggml_status { GGML_STATUS_SUCCESS = ..., ... };
struct ggml_context * ggml_init(struct ggml_init_params params);
void ggml_free(struct ggml_context * ctx);
struct ggml_tensor * ggml_new_tensor_4d(struct ggml_context * ctx, enum ggml_type type,
                                        int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3);
struct ggml_tensor * ggml_flash_attn_ext(struct ggml_context * ctx, struct ggml_tensor * q,
                                         struct ggml_tensor * k, struct ggml_tensor * v,
                                         struct ggml_tensor * mask, float scale, float max_bias,
                                         float logit_softcap);
void ggml_flash_attn_ext_add_sinks(struct ggml_tensor * a, struct ggml_tensor * sinks);
struct ggml_tensor * ggml_get_rows(struct ggml_context * ctx, struct ggml_tensor * a, struct ggml_tensor * b);
struct ggml_tensor * ggml_cpy(struct ggml_context * ctx, struct ggml_tensor * a, struct ggml_tensor * b);
struct ggml_cgraph * ggml_new_graph(struct ggml_context * ctx);
void ggml_build_forward_expand(struct ggml_cgraph * cgraph, struct ggml_tensor * tensor);
enum ggml_status ggml_graph_compute_with_ctx(struct ggml_context * ctx, struct ggml_cgraph * cgraph, int n_threads);
size_t ggml_nbytes(const struct ggml_tensor * tensor);
size_t ggml_quantize_chunk(enum ggml_type type, const float * src, void * dst, int64_t start,
                           int64_t nrows, int64_t n_per_row, const float * imatrix);
struct ggml_tensor * ggml_set_rows(struct ggml_context * ctx, struct ggml_tensor * a, struct ggml_tensor * b,
                                   struct ggml_tensor * c);
enum ggml_op_hint { GGML_HINT_NONE = ..., GGML_HINT_SRC0_IS_HADAMARD = ..., ... };
struct ggml_tensor * ggml_mul_mat(struct ggml_context * ctx, struct ggml_tensor * a, struct ggml_tensor * b);
void ggml_mul_mat_set_hint(struct ggml_tensor * a, enum ggml_op_hint hint);
struct ggml_tensor * ggml_reshape_2d(struct ggml_context * ctx, struct ggml_tensor * a, int64_t ne0, int64_t ne1);
struct ggml_tensor * ggml_view_4d(struct ggml_context * ctx, struct ggml_tensor * a, int64_t ne0, int64_t ne1,
                                  int64_t ne2, int64_t ne3, size_t nb1, size_t nb2, size_t nb3, size_t offset);
size_t ggml_tensor_overhead(void);
size_t ggml_graph_overhead(void);

/* ...and on any backend device (tests compare CUDA with the CPU through these) */
typedef struct ggml_backend * ggml_backend_t;
typedef struct ggml_backend_buffer * ggml_backend_buffer_t;
ggml_backend_t ggml_backend_dev_init(ggml_backend_dev_t device, const char * params);
void ggml_backend_free(ggml_backend_t backend);
bool ggml_backend_supports_op(ggml_backend_t backend, const struct ggml_tensor * op);
ggml_backend_buffer_t ggml_backend_alloc_ctx_tensors(struct ggml_context * ctx, ggml_backend_t backend);
void ggml_backend_buffer_free(ggml_backend_buffer_t buffer);
void ggml_backend_tensor_set(struct ggml_tensor * tensor, const void * data, size_t offset, size_t size);
void ggml_backend_tensor_get(const struct ggml_tensor * tensor, void * data, size_t offset, size_t size);
enum ggml_status ggml_backend_graph_compute(ggml_backend_t backend, struct ggml_cgraph * cgraph);

/* ---- rotorquant shim (csrc/shim/rq_shim.h) ------------------------------- */
struct rq_memory_bytes {
    size_t model;
    size_t context;
    size_t compute;
};
void rq_context_memory(const struct llama_context * ctx, struct rq_memory_bytes * out);
struct rq_memory_parts { size_t model; size_t kv; size_t recurrent; size_t compute; };
size_t rq_context_memory_by_buft(const struct llama_context * ctx, ggml_backend_dev_t * devs,
                                 struct rq_memory_parts * out, size_t cap);
void rq_log_silence(void);
struct rq_abort;
struct rq_abort * rq_abort_new(void);
void rq_abort_free(struct rq_abort * a);
void rq_abort_set(struct rq_abort * a, bool on);
bool rq_abort_callback(void * data);
int rq_logprobs(const float * logits, int n_vocab, int token, int top_n, float * token_logprob,
                int * top_ids, float * top_logprobs);
struct rq_capture;
struct rq_capture * rq_capture_new(const char * prefixes_csv);
void rq_capture_free(struct rq_capture * cap);
void rq_capture_next_graph(struct rq_capture * cap);
bool rq_capture_eval(struct ggml_tensor * t, bool ask, void * user_data);
size_t rq_capture_get(const struct rq_capture * cap, const char * name, const float ** data, int64_t ne[4]);
int rq_kv_policy_describe(const char * path, char * buf, size_t size);
int rq_fit_params(const char * path_model, struct llama_model_params * mparams,
                  struct llama_context_params * cparams, float * tensor_split,
                  struct llama_model_tensor_buft_override * overrides, size_t margin_bytes, uint32_t n_ctx_min);

/* ---- multimodal projectors (upstream's tools/mtmd: mtmd.h, mtmd-helper.h) ---- */
typedef struct mtmd_context mtmd_context;
typedef struct mtmd_bitmap mtmd_bitmap;
typedef struct mtmd_input_chunks mtmd_input_chunks;
typedef struct mtmd_helper_video mtmd_helper_video;
struct mtmd_context_params {
    bool use_gpu;
    bool print_timings;
    int n_threads;
    const char * media_marker;
    enum llama_flash_attn_type flash_attn_type;
    bool warmup;
    ...;
};
typedef struct mtmd_input_text {
    const char * text;
    size_t text_len;
    bool add_special;
    bool parse_special;
} mtmd_input_text;
struct mtmd_helper_init_opt { ...; };
struct mtmd_helper_bitmap_wrapper { mtmd_bitmap * bitmap; mtmd_helper_video * video_ctx; };
struct mtmd_context_params mtmd_context_params_default(void);
mtmd_context * mtmd_init_from_file(const char * mmproj_fname, const struct llama_model * text_model,
                                   const struct mtmd_context_params ctx_params);
void mtmd_free(mtmd_context * ctx);
bool mtmd_support_vision(const mtmd_context * ctx);
bool mtmd_support_audio(const mtmd_context * ctx);
void mtmd_bitmap_free(mtmd_bitmap * bitmap);
mtmd_input_chunks * mtmd_input_chunks_init(void);
void mtmd_input_chunks_free(mtmd_input_chunks * chunks);
int32_t mtmd_tokenize(const mtmd_context * ctx, mtmd_input_chunks * output, const mtmd_input_text * text,
                      const mtmd_bitmap * const * bitmaps, size_t n_bitmaps);
struct mtmd_helper_init_opt mtmd_helper_init_opt_default(void);
void mtmd_helper_log_set(ggml_log_callback log_callback, void * user_data);
struct mtmd_helper_bitmap_wrapper mtmd_helper_bitmap_init_from_buf(const mtmd_context * ctx, const unsigned char * buf,
                                                                   size_t len, bool placeholder,
                                                                   struct mtmd_helper_init_opt opt);
size_t mtmd_helper_get_n_tokens(const mtmd_input_chunks * chunks);
int32_t mtmd_helper_eval_chunks(mtmd_context * ctx, struct llama_context * lctx, const mtmd_input_chunks * chunks,
                                llama_pos n_past, llama_seq_id seq_id, int32_t n_batch, bool logits_last,
                                llama_pos * new_n_past);
typedef struct mtmd_input_chunk mtmd_input_chunk;
enum mtmd_input_chunk_type { MTMD_INPUT_CHUNK_TYPE_TEXT = ..., MTMD_INPUT_CHUNK_TYPE_IMAGE = ..., MTMD_INPUT_CHUNK_TYPE_AUDIO = ..., ... };
void mtmd_bitmap_set_id(mtmd_bitmap * bitmap, const char * id);
size_t mtmd_input_chunks_size(const mtmd_input_chunks * chunks);
const mtmd_input_chunk * mtmd_input_chunks_get(const mtmd_input_chunks * chunks, size_t idx);
enum mtmd_input_chunk_type mtmd_input_chunk_get_type(const mtmd_input_chunk * chunk);
const llama_token * mtmd_input_chunk_get_tokens_text(const mtmd_input_chunk * chunk, size_t * n_tokens_output);
size_t mtmd_input_chunk_get_n_tokens(const mtmd_input_chunk * chunk);
const char * mtmd_input_chunk_get_id(const mtmd_input_chunk * chunk);
llama_pos mtmd_input_chunk_get_n_pos(const mtmd_input_chunk * chunk);
int32_t mtmd_helper_eval_chunk_single(mtmd_context * ctx, struct llama_context * lctx, const mtmd_input_chunk * chunk,
                                      llama_pos n_past, llama_seq_id seq_id, int32_t n_batch, bool logits_last,
                                      llama_pos * new_n_past);

/* ---- chat templates and parsing (csrc/shim/rq_chat.h) --------------------- */
void rq_string_free(char * s);
struct rq_chat;
struct rq_chat * rq_chat_new(const struct llama_model * model, const char * template_override, char ** error);
void rq_chat_free(struct rq_chat * chat);
char * rq_chat_info(const struct rq_chat * chat, char ** error);
char * rq_chat_apply(const struct rq_chat * chat, const char * request_json, char ** error);
struct rq_chat_parser;
struct rq_chat_parser * rq_chat_parser_new(const char * parser_json, char ** error);
void rq_chat_parser_free(struct rq_chat_parser * parser);
char * rq_chat_parse(const struct rq_chat_parser * parser, const char * text, bool partial, char ** error);
struct llama_sampler * rq_reasoning_budget_new(const struct llama_vocab * vocab, const char * start,
                                               const char * const * ends, size_t n_ends, const char * message,
                                               int32_t budget, const char * generation_prompt, char ** error);
struct llama_sampler * rq_reasoning_gated_grammar_new(struct llama_sampler * budget, struct llama_sampler * grammar);
char * rq_json_schema_to_grammar(const char * schema_json, char ** error);

/* C logs reach Python through this callback (rotorquant/_logging.py). */
extern "Python" void _rq_python_log(enum ggml_log_level level, const char * text, void * user_data);
