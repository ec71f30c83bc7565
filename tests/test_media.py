"""Images in chat messages: a projector (mmproj) loaded next to the model, media given as
paths, file:// URLs, data: URIs or bytes, all read the same; bad media named.

The model is the tiny random-weight Qwen3.5-MoE with its vision tower, converted by
rq-convert (model + mmproj-*.gguf), so replies are noise; what is checked is that the
image reaches the model (more prompt tokens, a different reply) the same way from every
kind of source.
"""
import base64
import struct

import pytest

from conftest import run
from rotorquant import Llama


def bmp(width: int, height: int) -> bytes:
    """A 24-bit BMP with a colour gradient (stb_image reads it; no imaging library needed)."""
    pad = (4 - (3 * width) % 4) % 4
    rows = b"".join(b"".join(bytes(((4 * x) % 256, (4 * y) % 256, 128)) for x in range(width)) + b"\0" * pad
                    for y in range(height))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    return header + info + rows


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory):
    import rq_assets
    from hf_checkpoints import tiny_qwen35
    tmp = tmp_path_factory.mktemp("vision")
    ckpt = tiny_qwen35(tmp / "ckpt", rq_assets.qwen35_tokenizer())
    proc = run(["rq-convert", ckpt, "-o", tmp / "q35.gguf", "--outtype", "f16"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp / "img.bmp").write_bytes(bmp(64, 64))
    return tmp / "q35.gguf", tmp / "mmproj-q35.gguf", tmp / "img.bmp"


def ask(llm, image_part):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"}, image_part]}]
    out = llm.create_chat_completion(msgs, max_tokens=6, temperature=0)
    return out["choices"][0]["message"]["content"], out["usage"]["prompt_tokens"]


def test_an_image_reaches_the_model_the_same_from_every_kind_of_source(vision_model):
    model, mmproj, image = vision_model
    data = image.read_bytes()
    sources = [str(image), image, f"file://{image}", data,
               "data:image/bmp;base64," + base64.b64encode(data).decode()]
    with Llama(model, mmproj_path=mmproj, n_ctx=1024, n_threads=2) as llm:
        assert llm._projector.vision
        replies = [ask(llm, {"type": "image_url", "image_url": {"url": src}}) for src in sources]
        replies.append(ask(llm, {"type": "image", "image": data}))
        text_only = llm.create_chat_completion([{"role": "user", "content": "What is in the picture?"}],
                                               max_tokens=6, temperature=0)
    assert len(set(replies)) == 1
    assert replies[0][1] > text_only["usage"]["prompt_tokens"] + 4  # the image's tokens


def test_a_chats_next_turn_keeps_the_image_it_already_encoded(vision_model):
    """The KV cache's record holds each medium by a hash of its bytes: the next turn of a
    chat about an image resumes after the image (on this hybrid model, from the state saved
    there) instead of encoding it again, and replies as a fresh context does."""
    model, mmproj, image = vision_model
    turn1 = [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                          {"type": "image_url", "image_url": {"url": str(image)}}]}]
    with Llama(model, mmproj_path=mmproj, n_ctx=1024, n_threads=2) as llm:
        first = llm.create_chat_completion(turn1, max_tokens=6, temperature=0)
        turn2 = turn1 + [first["choices"][0]["message"], {"role": "user", "content": "And its colours?"}]
        second = llm.create_chat_completion(turn2, max_tokens=6, temperature=0)
        reused = llm.perf()["prompt_reused_tokens"]
        other = [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                              {"type": "image", "image": bmp(32, 32)}]}]
        llm.create_chat_completion(other, max_tokens=2, temperature=0)
        reused_other = llm.perf()["prompt_reused_tokens"]
    with Llama(model, mmproj_path=mmproj, n_ctx=1024, n_threads=2) as fresh:
        again = fresh.create_chat_completion(turn2, max_tokens=6, temperature=0)
    image_tokens = first["usage"]["prompt_tokens"] - len(llm_text_tokens(model, turn1))
    assert reused >= image_tokens > 4            # the image (and the text before it) stayed
    assert reused_other < reused - 4             # another image: only the text before it stays
    assert second["choices"][0]["message"] == again["choices"][0]["message"]
    assert second["usage"] == again["usage"]


def llm_text_tokens(model, messages) -> list[int]:
    """The prompt's tokens without its media (their parts dropped)."""
    text_only = [{**m, "content": [p for p in m["content"] if p["type"] == "text"]} for m in messages]
    with Llama(model, vocab_only=True) as llm:
        return llm.tokenize(llm.apply_chat_template(text_only), parse_special=True)


def test_the_media_marker_is_private_so_typed_text_is_never_an_image(vision_model):
    model, mmproj, image = vision_model
    with Llama(model, mmproj_path=mmproj, n_ctx=1024, n_threads=2) as llm:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "<__media__> is just text"},
                                             {"type": "image_url", "image_url": {"url": str(image)}}]}]
        prompt = llm.apply_chat_template(msgs)
        assert prompt.count(llm._projector.marker) == 1 and "<__media__> is just text" in prompt
        assert ask(llm, msgs[0]["content"][1])[0] == ask(llm, msgs[0]["content"][1])[0]
        llm.create_chat_completion(msgs, max_tokens=2)  # one marker, one image: no mismatch


@pytest.mark.parametrize("url, match", [
    ("http://example.com/cat.png", "remote media are not fetched"),
    ("/nonexistent/cat.png", "cannot read media file"),
    ("data:image/png,notbase64", "base64"),
    ("data:image/png;base64,!!!", "not valid base64"),
])
def test_bad_media_are_named(vision_model, url, match):
    model, mmproj, _ = vision_model
    with Llama(model, mmproj_path=mmproj, n_ctx=512, n_threads=2) as llm:
        with pytest.raises(ValueError, match=match):
            ask(llm, {"type": "image_url", "image_url": {"url": url}})
        with pytest.raises(ValueError, match="not an image or audio file"):
            ask(llm, {"type": "image", "image": b"this is not an image"})
        assert ask(llm, {"type": "text", "text": "still usable"})[0] is not None


def test_media_without_a_projector_and_a_missing_projector_are_refused(vision_model, tmp_path):
    model, _, image = vision_model
    with Llama(model, n_ctx=256, n_threads=2) as llm:
        with pytest.raises(ValueError, match="mmproj_path"):
            ask(llm, {"type": "image_url", "image_url": {"url": str(image)}})
    with pytest.raises(FileNotFoundError, match="projector"):
        Llama(model, mmproj_path=tmp_path / "missing.gguf")
