// rq_chat.h over upstream's common/chat.  The request is read with llama-server's
// defaults (jinja on, prefill of a trailing assistant message, "deepseek" reasoning
// format, thinking enabled) so that a prompt rendered here is the one the bundled
// llama-server renders for the same messages (tests/test_chat.py checks it byte for byte
// against the server's /apply-template).
#include "rq_chat.h"

#include "chat.h"
#include "common.h"
#include "json-schema-to-grammar.h"
#include "reasoning-budget.h"
#include "llama.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

struct rq_chat {
    common_chat_templates_ptr tmpls;
    const llama_vocab * vocab;
};

struct rq_chat_parser {
    common_chat_parser_params params;
};

namespace {

char * dup_string(const std::string & s) {
    char * out = (char *) std::malloc(s.size() + 1);
    if (out != nullptr) {
        std::memcpy(out, s.data(), s.size() + 1);
    }
    return out;
}

// Runs fn (which returns the result text); any exception becomes *error and NULL.
template <typename F>
char * guarded(char ** error, F && fn) {
    if (error != nullptr) {
        *error = nullptr;
    }
    try {
        return dup_string(fn());
    } catch (const std::exception & e) {
        if (error != nullptr) {
            *error = dup_string(e.what());
        }
    } catch (...) {
        if (error != nullptr) {
            *error = dup_string("unknown C++ exception");
        }
    }
    return nullptr;
}

common_json strings(const std::vector<std::string> & v) {
    common_json out = common_json::array();
    for (const auto & s : v) {
        out.push_back(s);
    }
    return out;
}

// What the request asks of the template.  Field meanings are those of the server's
// OpenAI endpoint; absent fields take the server's defaults.
common_chat_templates_inputs read_request(const common_chat_templates * tmpls, const common_json & req) {
    if (!req.is_object()) {
        throw std::invalid_argument("the request must be a JSON object");
    }
    if (!req.contains("messages") || !req.at("messages").is_array()) {
        throw std::invalid_argument("'messages' must be a list of messages");
    }
    common_chat_templates_inputs in;
    in.messages = common_chat_msgs_parse_oaicompat(req.at("messages"));
    const common_json tools = req.value("tools", common_json());
    if (tools.is_array()) {
        in.tools = common_chat_tools_parse_oaicompat(tools);
    }
    in.tool_choice = common_chat_tool_choice_parse_oaicompat(req.value("tool_choice", std::string("auto")));
    const common_json parallel = req.value("parallel_tool_calls", common_json());
    in.parallel_tool_calls = parallel.is_boolean() ? parallel.get<bool>()
                                                   : common_chat_templates_get_caps(tmpls)["supports_parallel_tool_calls"];
    const common_json schema = req.value("json_schema", common_json());
    const std::string grammar = req.value("grammar", std::string());
    if (!schema.is_null() && !grammar.empty()) {
        throw std::invalid_argument("give either a JSON schema or a grammar, not both");
    }
    if (!schema.is_null()) {
        // an empty schema means any object
        in.json_schema = schema.is_object() && schema.size() == 0 ? std::string("{\"type\":\"object\"}") : schema.dump();
    }
    in.grammar = grammar;
    if (!in.tools.empty() && in.tool_choice != COMMON_CHAT_TOOL_CHOICE_NONE && !grammar.empty()) {
        throw std::invalid_argument("a custom grammar cannot be combined with tools");
    }

    in.add_generation_prompt = req.value("add_generation_prompt", true);
    const common_json cont = req.value("continue_final_message", common_json());
    in.continue_final_message = cont.is_null() ? COMMON_CHAT_CONTINUATION_NONE : common_chat_continuation_parse(cont);
    const bool ends_with_assistant = !in.messages.empty() && in.messages.back().role == "assistant";
    if (in.continue_final_message == COMMON_CHAT_CONTINUATION_NONE && ends_with_assistant) {
        // the server's default: a trailing assistant message is a prefill to continue
        if (in.messages.size() >= 2 && in.messages[in.messages.size() - 2].role == "assistant") {
            throw std::invalid_argument("two or more assistant messages at the end of the list");
        }
        in.continue_final_message = COMMON_CHAT_CONTINUATION_AUTO;
        in.add_generation_prompt  = false;
    }
    if (in.continue_final_message != COMMON_CHAT_CONTINUATION_NONE && in.add_generation_prompt) {
        throw std::invalid_argument("add_generation_prompt and continue_final_message cannot both be true");
    }
    if (in.continue_final_message != COMMON_CHAT_CONTINUATION_NONE && ends_with_assistant &&
        !in.messages.back().tool_calls.empty()) {
        throw std::invalid_argument("an assistant message with tool calls cannot be continued");
    }

    in.reasoning_format = common_reasoning_format_from_name(req.value("reasoning_format", std::string("deepseek")));
    in.enable_thinking  = req.value("enable_thinking", true);
    const common_json kwargs = req.value("chat_template_kwargs", common_json::object());
    if (!kwargs.is_object()) {
        throw std::invalid_argument("chat_template_kwargs must be an object");
    }
    for (const auto & [key, value] : kwargs.items()) {
        in.chat_template_kwargs[key] = value.dump();
    }
    const auto thinking = in.chat_template_kwargs.find("enable_thinking");
    if (thinking != in.chat_template_kwargs.end()) {
        if (thinking->second == "true" || thinking->second == "false") {
            in.enable_thinking = thinking->second == "true";
        } else {
            throw std::invalid_argument("chat_template_kwargs['enable_thinking'] must be a boolean");
        }
    }
    const std::string effort = req.value("reasoning_effort", std::string());
    if (effort == "none") {
        in.enable_thinking = false;
        in.chat_template_kwargs.erase("reasoning_effort");
    } else if (!effort.empty()) {
        in.chat_template_kwargs["reasoning_effort"] = common_json::make(effort).dump();
    }
    return in;
}

// Grammar triggers as llama_sampler_init_grammar_lazy_patterns takes them: regexes and
// token ids (a trigger word that is one token triggers on that token, as in the server).
void add_triggers(const rq_chat * chat, const common_chat_params & p, common_json & out) {
    common_json patterns = common_json::array();
    common_json tokens   = common_json::array();
    for (const auto & t : p.grammar_triggers) {
        switch (t.type) {
            case COMMON_GRAMMAR_TRIGGER_TYPE_WORD: {
                const auto ids = common_tokenize(chat->vocab, t.value, false, true);
                if (ids.size() == 1) {
                    tokens.push_back(ids[0]);
                } else {
                    patterns.push_back(regex_escape(t.value));
                }
                break;
            }
            case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN:
                patterns.push_back(t.value);
                break;
            case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: {
                std::string anchored = t.value;
                if (anchored.empty() || anchored.front() != '^') {
                    anchored.insert(anchored.begin(), '^');
                }
                if (anchored.size() == 1 || anchored.back() != '$') {
                    anchored.push_back('$');
                }
                patterns.push_back(anchored);
                break;
            }
            case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN:
                tokens.push_back(t.token);
                break;
        }
    }
    out["trigger_patterns"] = patterns;
    out["trigger_tokens"]   = tokens;
    common_json preserved = common_json::array();
    for (const auto & s : p.preserved_tokens) {
        const auto ids = common_tokenize(chat->vocab, s, false, true);
        if (ids.size() == 1) {
            preserved.push_back(ids[0]);
        }
    }
    out["preserved_tokens"] = preserved;
}

}  // namespace

void rq_string_free(char * s) {
    std::free(s);
}

struct rq_chat * rq_chat_new(const struct llama_model * model, const char * template_override, char ** error) {
    rq_chat * chat = nullptr;
    char * ok = guarded(error, [&]() {
        if (model == nullptr) {
            throw std::invalid_argument("no model");
        }
        auto tmpls = common_chat_templates_init(model, template_override ? template_override : "");
        if (!tmpls) {
            throw std::runtime_error("the chat template could not be parsed");
        }
        chat = new rq_chat{std::move(tmpls), llama_model_get_vocab(model)};
        return std::string();
    });
    std::free(ok);
    return chat;
}

void rq_chat_free(struct rq_chat * chat) {
    delete chat;
}

char * rq_chat_info(const struct rq_chat * chat, char ** error) {
    return guarded(error, [&]() {
        common_json caps = common_json::object();
        for (const auto & [name, on] : common_chat_templates_get_caps(chat->tmpls.get())) {
            caps[name] = on;
        }
        common_json out = common_json::object();
        out["source"]   = common_chat_templates_source(chat->tmpls.get());
        out["explicit"] = common_chat_templates_was_explicit(chat->tmpls.get());
        out["caps"]     = caps;
        return out.dump();
    });
}

char * rq_chat_apply(const struct rq_chat * chat, const char * request_json, char ** error) {
    return guarded(error, [&]() {
        const common_json req = common_json::parse(request_json ? request_json : "");
        const common_chat_templates_inputs in = read_request(chat->tmpls.get(), req);
        const common_chat_params p = common_chat_templates_apply(chat->tmpls.get(), in);

        common_json out = common_json::object();
        out["prompt"]            = p.prompt;
        out["grammar"]           = p.grammar;
        out["grammar_lazy"]      = p.grammar_lazy;
        out["stops"]             = strings(p.additional_stops);
        out["generation_prompt"] = p.generation_prompt;
        out["thinking_start_tag"] = p.thinking_start_tag;
        out["thinking_end_tags"]  = strings(p.thinking_end_tags);
        add_triggers(chat, p, out);
        if (p.grammar_lazy && out["trigger_patterns"].size() == 0 && out["trigger_tokens"].size() == 0) {
            throw std::runtime_error("the template asks for a lazy grammar but gives no trigger");
        }
        common_json parser = common_json::object();
        parser["format"]            = (int) p.format;
        parser["reasoning_format"]  = common_reasoning_format_name(in.reasoning_format);
        parser["generation_prompt"] = p.generation_prompt;
        parser["parser"]            = p.parser;
        parser["parse_tool_calls"]  = !in.tools.empty() && in.tool_choice != COMMON_CHAT_TOOL_CHOICE_NONE;
        parser["is_continuation"]   = in.continue_final_message != COMMON_CHAT_CONTINUATION_NONE;
        out["parser"] = parser;
        return out.dump();
    });
}

struct rq_chat_parser * rq_chat_parser_new(const char * parser_json, char ** error) {
    rq_chat_parser * parser = nullptr;
    char * ok = guarded(error, [&]() {
        const common_json j = common_json::parse(parser_json ? parser_json : "");
        common_chat_parser_params p;
        const int format = j.value("format", 0);
        if (format < 0 || format >= COMMON_CHAT_FORMAT_COUNT) {
            throw std::invalid_argument("unknown chat format " + std::to_string(format));
        }
        p.format            = (common_chat_format) format;
        p.reasoning_format  = common_reasoning_format_from_name(j.value("reasoning_format", std::string("deepseek")));
        p.generation_prompt = j.value("generation_prompt", std::string());
        p.parse_tool_calls  = j.value("parse_tool_calls", true);
        p.is_continuation   = j.value("is_continuation", false);
        const std::string arena = j.value("parser", std::string());
        if (!arena.empty()) {
            p.parser.load(arena);
        }
        parser = new rq_chat_parser{std::move(p)};
        return std::string();
    });
    std::free(ok);
    return parser;
}

void rq_chat_parser_free(struct rq_chat_parser * parser) {
    delete parser;
}

char * rq_chat_parse(const struct rq_chat_parser * parser, const char * text, bool partial, char ** error) {
    return guarded(error, [&]() {
        const common_chat_msg msg = common_chat_parse(text ? text : "", partial, parser->params);
        return msg.to_json_oaicompat().dump();
    });
}

char * rq_json_schema_to_grammar(const char * schema_json, char ** error) {
    return guarded(error, [&]() {
        return json_schema_to_grammar(common_json::parse(schema_json ? schema_json : ""));
    });
}

struct llama_sampler * rq_reasoning_budget_new(const struct llama_vocab * vocab, const char * start,
                                               const char * const * ends, size_t n_ends, const char * message,
                                               int32_t budget, const char * generation_prompt, char ** error) {
    llama_sampler * smpl = nullptr;
    char * ok = guarded(error, [&]() {
        if (!vocab || !start || !*start || !ends || n_ends == 0 || budget < 0) {
            throw std::invalid_argument("a reasoning budget needs a vocabulary, a start tag, an end tag and a budget >= 0");
        }
        std::vector<llama_tokens> end_seqs;
        std::vector<std::string> end_texts;
        for (size_t i = 0; i < n_ends; ++i) {
            if (ends[i] && *ends[i]) {
                end_seqs.push_back(common_tokenize(vocab, ends[i], false, true));
                end_texts.emplace_back(ends[i]);
            }
        }
        if (end_seqs.empty()) {
            throw std::invalid_argument("a reasoning budget needs a non-empty end tag");
        }
        // what is forced when the budget runs out: the message, then the first end tag (as the server)
        llama_tokens forced = message && *message ? common_tokenize(vocab, message, false, true) : llama_tokens();
        forced.insert(forced.end(), end_seqs.front().begin(), end_seqs.front().end());
        // Where the template left the block, read from its text (the server feeds the
        // generation prompt's tokens instead; a tag tokenized differently in context is then
        // missed, a block the template closed can leave forcing pending, and what the template
        // wrote after an open tag counts against the budget):
        //   open -> counting from the first generated token, closed -> done, none -> idle.
        const std::string gen = generation_prompt ? generation_prompt : "";
        common_reasoning_budget_state state = REASONING_BUDGET_IDLE;
        const size_t opened = gen.rfind(start);
        if (opened != std::string::npos) {
            state = REASONING_BUDGET_COUNTING;
            for (const auto & e : end_texts) {
                if (gen.find(e, opened + std::strlen(start)) != std::string::npos) {
                    state = REASONING_BUDGET_DONE;
                }
            }
        }
        smpl = common_reasoning_budget_init(vocab, {common_tokenize(vocab, start, false, true)}, end_seqs, forced, budget, state);
        return std::string();
    });
    if (!ok && smpl) {
        llama_sampler_free(smpl);
        smpl = nullptr;
    }
    std::free(ok);
    return smpl;
}

// ---- a lazy grammar behind a reasoning budget ---------------------------------------------
// What upstream's common_sampler does with the two (sampling.cpp, grammar_should_apply):
// while a reasoning block is counting or forcing, the grammar neither constrains nor sees
// tokens (a tool-call trigger written while thinking is thinking, and the forced end tag is
// never rejected); when the block ends, the end tag that ended it is replayed into the
// grammar (it may hold a trigger).

namespace {

struct rq_gate {
    llama_sampler * budget;
    llama_sampler * grammar;
};

bool rq_gate_open(const rq_gate * g) {
    const auto state = common_reasoning_budget_get_state(g->budget);
    return state == REASONING_BUDGET_IDLE || state == REASONING_BUDGET_DONE;
}

const char * rq_gate_name(const llama_sampler *) {
    return "rq-reasoning-gated-grammar";
}

void rq_gate_accept(llama_sampler * smpl, llama_token token) {
    auto * g = static_cast<rq_gate *>(smpl->ctx);
    const bool to_grammar = rq_gate_open(g);  // the state before this token decides
    llama_sampler_accept(g->budget, token);
    if (!to_grammar && common_reasoning_budget_get_state(g->budget) == REASONING_BUDGET_DONE) {
        if (const llama_tokens * end = common_reasoning_budget_get_end_match(g->budget)) {
            for (const llama_token t : *end) {
                llama_sampler_accept(g->grammar, t);
            }
        }
    }
    if (to_grammar) {
        llama_sampler_accept(g->grammar, token);
    }
}

void rq_gate_apply(llama_sampler * smpl, llama_token_data_array * cur_p) {
    auto * g = static_cast<rq_gate *>(smpl->ctx);
    llama_sampler_apply(g->budget, cur_p);
    if (rq_gate_open(g)) {
        llama_sampler_apply(g->grammar, cur_p);
    }
}

void rq_gate_reset(llama_sampler * smpl) {
    auto * g = static_cast<rq_gate *>(smpl->ctx);
    llama_sampler_reset(g->budget);
    llama_sampler_reset(g->grammar);
}

void rq_gate_free(llama_sampler * smpl) {
    auto * g = static_cast<rq_gate *>(smpl->ctx);
    llama_sampler_free(g->budget);
    llama_sampler_free(g->grammar);
    delete g;
}

llama_sampler * rq_gate_make(llama_sampler * budget, llama_sampler * grammar);

llama_sampler * rq_gate_clone(const llama_sampler * smpl) {
    const auto * g = static_cast<const rq_gate *>(smpl->ctx);
    return rq_gate_make(llama_sampler_clone(g->budget), llama_sampler_clone(g->grammar));
}

llama_sampler_i rq_gate_iface = {
    /* .name              = */ rq_gate_name,
    /* .accept            = */ rq_gate_accept,
    /* .apply             = */ rq_gate_apply,
    /* .reset             = */ rq_gate_reset,
    /* .clone             = */ rq_gate_clone,
    /* .free              = */ rq_gate_free,
    /* .backend_init      = */ nullptr,
    /* .backend_accept    = */ nullptr,
    /* .backend_apply     = */ nullptr,
    /* .backend_set_input = */ nullptr,
    /* .backend_reset     = */ nullptr,
    /* .copy_state        = */ nullptr,
};

llama_sampler * rq_gate_make(llama_sampler * budget, llama_sampler * grammar) {
    return llama_sampler_init(&rq_gate_iface, new rq_gate{budget, grammar});
}

} // namespace

struct llama_sampler * rq_reasoning_gated_grammar_new(struct llama_sampler * budget, struct llama_sampler * grammar) {
    if (!budget || !grammar) {
        llama_sampler_free(budget);
        llama_sampler_free(grammar);
        return nullptr;
    }
    return rq_gate_make(budget, grammar);
}
