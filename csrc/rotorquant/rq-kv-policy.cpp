#include "rq-kv-policy.h"

#include "gguf.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

#define RQ_KEY(name) "rotorquant.kv_policy." name

static const uint32_t RQ_KV_POLICY_VERSION = 1;

static thread_local const rq_kv_policy * g_current = nullptr;

static ggml_type type_from_name(const std::string & path, const char * key, const char * name) {
    if (name[0] == '\0') {
        return GGML_TYPE_COUNT;
    }
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * tn = ggml_type_name((ggml_type) t);
        if (tn && strcmp(tn, name) == 0 && ggml_type_size((ggml_type) t) > 0) {
            return (ggml_type) t;
        }
    }
    throw std::runtime_error(path + ": " + key + ": unknown cache type '" + name + "'");
}

static std::vector<ggml_type> read_types(const std::string & path, gguf_context * g, const char * key, uint32_t n_layer) {
    std::vector<ggml_type> res(n_layer, GGML_TYPE_COUNT);
    const int64_t id = gguf_find_key(g, key);
    if (id < 0) {
        return res;
    }
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(g, id) != GGUF_TYPE_STRING) {
        throw std::runtime_error(path + ": " + key + " must be an array of type names");
    }
    if (gguf_get_arr_n(g, id) != n_layer) {
        throw std::runtime_error(path + ": " + key + " has " + std::to_string(gguf_get_arr_n(g, id)) +
                " entries for " + std::to_string(n_layer) + " layers");
    }
    for (uint32_t il = 0; il < n_layer; ++il) {
        res[il] = type_from_name(path, key, gguf_get_arr_str(g, id, il));
    }
    return res;
}

static int32_t read_i32(const std::string & path, gguf_context * g, const char * key, int32_t dflt) {
    const int64_t id = gguf_find_key(g, key);
    if (id < 0) {
        return dflt;
    }
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_INT32) {
        throw std::runtime_error(path + ": " + key + " must be an int32");
    }
    return gguf_get_val_i32(g, id);
}

static ggml_type read_type(const std::string & path, gguf_context * g, const char * key) {
    const int64_t id = gguf_find_key(g, key);
    if (id < 0) {
        return GGML_TYPE_COUNT;
    }
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_STRING) {
        throw std::runtime_error(path + ": " + key + " must be a type name");
    }
    return type_from_name(path, key, gguf_get_val_str(g, id));
}

std::shared_ptr<const rq_kv_policy> rq_kv_policy_load(const std::string & path) {
    ggml_context * meta = nullptr;
    gguf_init_params params = { /*.no_alloc =*/ false, /*.ctx =*/ &meta };
    gguf_context * g = gguf_init_from_file(path.c_str(), params);
    if (!g) {
        throw std::runtime_error(path + ": not a readable GGUF KV policy file");
    }
    struct guard_t {
        gguf_context * g; ggml_context * m;
        ~guard_t() { gguf_free(g); if (m) { ggml_free(m); } }
    } guard { g, meta };

    const int64_t id_ver = gguf_find_key(g, RQ_KEY("version"));
    if (id_ver < 0 || gguf_get_kv_type(g, id_ver) != GGUF_TYPE_UINT32) {
        throw std::runtime_error(path + ": not a rotorquant KV policy (no " RQ_KEY("version") ")");
    }
    if (gguf_get_val_u32(g, id_ver) != RQ_KV_POLICY_VERSION) {
        throw std::runtime_error(path + ": KV policy version " + std::to_string(gguf_get_val_u32(g, id_ver)) +
                " is not supported by this build (expects " + std::to_string(RQ_KV_POLICY_VERSION) + ")");
    }
    const int64_t id_nl = gguf_find_key(g, RQ_KEY("n_layer"));
    if (id_nl < 0 || gguf_get_kv_type(g, id_nl) != GGUF_TYPE_UINT32) {
        throw std::runtime_error(path + ": missing " RQ_KEY("n_layer"));
    }
    const uint32_t n_layer = gguf_get_val_u32(g, id_nl);
    if (n_layer == 0 || n_layer > 4096) {
        throw std::runtime_error(path + ": implausible layer count " + std::to_string(n_layer));
    }

    auto res = std::make_shared<rq_kv_policy>();
    res->path        = path;
    res->base_type_k = read_type(path, g, RQ_KEY("base_type_k"));
    res->base_type_v = read_type(path, g, RQ_KEY("base_type_v"));
    res->type_k      = read_types(path, g, RQ_KEY("type_k"), n_layer);
    res->type_v      = read_types(path, g, RQ_KEY("type_v"), n_layer);
    res->attn_rot_k  = read_i32(path, g, RQ_KEY("attn_rot_k"), -1);
    res->attn_rot_v  = read_i32(path, g, RQ_KEY("attn_rot_v"), -1);
    if (res->attn_rot_k < -1 || res->attn_rot_k > 1 || res->attn_rot_v < -1 || res->attn_rot_v > 1) {
        throw std::runtime_error(path + ": attn_rot_k/attn_rot_v must be -1, 0 or 1");
    }

    res->k_center.resize(n_layer);
    for (uint32_t il = 0; il < n_layer; ++il) {
        const std::string name = "k_center." + std::to_string(il);
        ggml_tensor * t = ggml_get_tensor(meta, name.c_str());
        if (!t) {
            continue;
        }
        if (t->type != GGML_TYPE_F32 || ggml_n_dims(t) != 1) {
            throw std::runtime_error(path + ": " + name + " must be a 1-D F32 tensor");
        }
        const float * d = (const float *) t->data;
        for (int64_t i = 0; i < t->ne[0]; ++i) {
            if (!std::isfinite(d[i])) {
                throw std::runtime_error(path + ": " + name + " holds a non-finite value");
            }
        }
        res->k_center[il].assign(d, d + t->ne[0]);
    }
    return res;
}

ggml_type rq_kv_policy::layer_type_k(uint32_t il, ggml_type ctx_type) const {
    if (ctx_type != base_type_k || il >= type_k.size() || type_k[il] == GGML_TYPE_COUNT) {
        return ctx_type;
    }
    return type_k[il];
}

ggml_type rq_kv_policy::layer_type_v(uint32_t il, ggml_type ctx_type) const {
    if (ctx_type != base_type_v || il >= type_v.size() || type_v[il] == GGML_TYPE_COUNT) {
        return ctx_type;
    }
    return type_v[il];
}

const std::vector<float> * rq_kv_policy::layer_k_center(uint32_t il) const {
    if (il >= k_center.size() || k_center[il].empty()) {
        return nullptr;
    }
    return &k_center[il];
}

const rq_kv_policy * rq_kv_policy_current() {
    return g_current;
}

rq_kv_policy_scope::rq_kv_policy_scope(const rq_kv_policy * policy) : prev(g_current) {
    g_current = policy;
}

rq_kv_policy_scope::~rq_kv_policy_scope() {
    g_current = prev;
}

uint64_t rq_hash_bytes(uint64_t h, const void * data, size_t n) {
    const uint8_t * p = (const uint8_t *) data;
    for (size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}
