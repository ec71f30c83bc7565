"""Images in a chat: the model's projector (mmproj) turns them into embeddings.

    python examples/vision.py MODEL.gguf MMPROJ.gguf [IMAGE]

rq-convert writes the projector next to the model (mmproj-NAME.gguf).  An image may be a
path, a file:// URL, a data: URI or raw bytes; without IMAGE a gradient is drawn.  With
only MODEL, the script shows what happens to an image when no projector is loaded.
"""
import base64
import struct
import sys

from rotorquant import Llama


def gradient_bmp(width: int = 64, height: int = 64) -> bytes:
    pad = (4 - (3 * width) % 4) % 4
    rows = b"".join(b"".join(bytes(((4 * x) % 256, (4 * y) % 256, 128)) for x in range(width)) + b"\0" * pad
                    for y in range(height))
    return (struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(rows), 2835, 2835, 0, 0) + rows)


def main(model: str, mmproj: "str | None", image: "str | None") -> None:
    picture = image or "data:image/bmp;base64," + base64.b64encode(gradient_bmp()).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe the picture in one sentence."},
                                             {"type": "image_url", "image_url": {"url": picture}}]}]
    with Llama(model, n_ctx=4096, mmproj_path=mmproj) as llm:
        if mmproj is None:
            try:
                llm.create_chat_completion(messages)
            except ValueError as exc:
                print(f"refused, as expected: {exc}")
            return
        reply = llm.create_chat_completion(messages, max_tokens=64, temperature=0)
        print(reply["choices"][0]["message"]["content"])
        print(f"prompt tokens with the image: {reply['usage']['prompt_tokens']}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None, sys.argv[3] if len(sys.argv) > 3 else None)
