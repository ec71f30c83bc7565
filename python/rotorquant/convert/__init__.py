"""Hugging Face safetensors checkpoint -> GGUF, around upstream's pinned converter.

The conversion itself is llama.cpp's own ``convert_hf_to_gguf.py`` (shipped inside this
package with its ``conversion/`` and ``gguf-py``), run in a subprocess.  This package
adds what a user needs around it: reading the checkpoint's headers without loading
weights (``checkpoint``), a plan with sizes and a disk check (``plan``), atomic outputs
with provenance metadata and optional quantization (``pipeline``), and verification of
the result (``verify``).
"""
