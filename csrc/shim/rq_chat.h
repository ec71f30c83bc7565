// Chat templates, tool-call/reasoning parsing and JSON-schema grammars from upstream's
// common/chat (the code llama-server runs), behind a plain C API of JSON strings.
//
// Why JSON: the C++ side has dozens of fields that change between upstream versions;
// JSON keeps this header stable and the Python side a dict away from OpenAI's shapes.
// Every function returning char * gives a malloc'd string the caller releases with
// rq_string_free; on failure it returns NULL and, when `error` is not NULL, sets *error to
// a malloc'd message (also released with rq_string_free).  No C++ exception crosses.
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct llama_model;
struct llama_vocab;
struct llama_sampler;

void rq_string_free(char * s);

// The chat templates of a model (the GGUF's, or `template_override` when not NULL/empty:
// Jinja source).  A model without a template gets upstream's fallback (ChatML).
struct rq_chat;
struct rq_chat * rq_chat_new(const struct llama_model * model, const char * template_override, char ** error);
void rq_chat_free(struct rq_chat * chat);
// {"source": template text, "explicit": from the GGUF or the override, "caps": {...}}
char * rq_chat_info(const struct rq_chat * chat, char ** error);

// Renders an OpenAI-style request (keys: messages, tools, tool_choice, parallel_tool_calls,
// add_generation_prompt, continue_final_message, json_schema, grammar, reasoning_format,
// enable_thinking, chat_template_kwargs, reasoning_effort) the way llama-server does with
// its defaults.  Result: {"prompt", "grammar", "grammar_lazy", "trigger_patterns",
// "trigger_tokens", "preserved_tokens", "stops", "generation_prompt", "thinking_start_tag",
// "thinking_end_tags", "parser": {...}}
// where "parser" is the input of rq_chat_parser_new.
char * rq_chat_apply(const struct rq_chat * chat, const char * request_json, char ** error);

// Parses generated text into an OpenAI assistant message (content, reasoning_content,
// tool_calls); `partial` while the text is still growing (streaming).
struct rq_chat_parser;
struct rq_chat_parser * rq_chat_parser_new(const char * parser_json, char ** error);
void rq_chat_parser_free(struct rq_chat_parser * parser);
char * rq_chat_parse(const struct rq_chat_parser * parser, const char * text, bool partial, char ** error);

// Upstream's reasoning-budget sampler (common/reasoning-budget.h, what llama-server's
// --reasoning-budget and "reasoning_budget_tokens" use): inside a block opened by the
// `start` tag, `budget` generated tokens pass (a UTF-8 character in progress is finished),
// then `message` and the first of the `ends` tags are forced; any end tag generated earlier
// ends the block.  Whether the template's `generation_prompt` (the text it wrote after the
// last message) left a block open, closed or none is read from that text, so what the
// template wrote is never counted.  Tags are tokenized with special tokens.  NULL on
// failure (*error set); free with llama_sampler_free, or let a chain own it.
struct llama_sampler * rq_reasoning_budget_new(const struct llama_vocab * vocab, const char * start,
                                               const char * const * ends, size_t n_ends, const char * message,
                                               int32_t budget, const char * generation_prompt, char ** error);

// `grammar` (lazy: tool calls) behind `budget` (rq_reasoning_budget_new), gated as
// llama-server gates them: while the budget counts or forces, the grammar neither
// constrains nor sees tokens; the end tag that closes the block is replayed into it.
// Takes ownership of both (also on failure: NULL if either is NULL).
struct llama_sampler * rq_reasoning_gated_grammar_new(struct llama_sampler * budget, struct llama_sampler * grammar);

// GBNF for a JSON schema (upstream's converter, as the server's "json_schema" uses).
char * rq_json_schema_to_grammar(const char * schema_json, char ** error);

#ifdef __cplusplus
}
#endif
