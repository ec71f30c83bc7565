"""Run upstream's convert_hf_to_gguf.py with rotorquant provenance keys in every GGUF it writes.

    python _run_upstream.py UPSTREAM_DIR [converter arguments...]

The keys come as JSON in $RQ_CONVERT_METADATA; they are added to the first shard's
key/values just before the header is written.  Run as a subprocess by pipeline.py.
"""
import json
import os
import runpy
import sys
from pathlib import Path

upstream = Path(sys.argv[1])
extra = json.loads(os.environ.get("RQ_CONVERT_METADATA", "{}"))
sys.path.insert(0, str(upstream))
sys.path.insert(1, str(upstream / "gguf-py"))
import gguf  # noqa: E402  (upstream's own, from the path above)

_write_header = gguf.GGUFWriter.write_header_to_file


def write_header_to_file(self, *args, **kwargs):
    if not getattr(self, "_rotorquant_keys", False):
        for key, value in extra.items():
            self.add_string(key, str(value))
        self._rotorquant_keys = True
    return _write_header(self, *args, **kwargs)


gguf.GGUFWriter.write_header_to_file = write_header_to_file
script = upstream / "convert_hf_to_gguf.py"
sys.argv = [str(script), *sys.argv[2:]]
runpy.run_path(str(script), run_name="__main__")
