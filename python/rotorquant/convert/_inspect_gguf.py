"""Print a JSON summary of GGUF files, read with upstream's gguf-py (run by verify.py).

    python _inspect_gguf.py FILE [FILE...]
"""
import json
import sys

import gguf  # upstream's, via PYTHONPATH set by the caller

out = []
for path in sys.argv[1:]:
    r = gguf.GGUFReader(path)
    out.append({
        "path": path,
        "n_tensors": len(r.tensors),
        "n_elements": int(sum(int(t.n_elements) for t in r.tensors)),
        "empty": [t.name for t in r.tensors if int(t.n_elements) == 0 or int(t.n_bytes) == 0],
        "keys": {f.name: (f.contents() if f.types and f.types[0] == gguf.GGUFValueType.STRING else None)
                 for f in r.fields.values() if f.name.startswith(("general.", "rotorquant."))},
    })
print(json.dumps(out))
