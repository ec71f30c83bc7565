"""What upstream's converter knows about one architecture, as JSON (run by pipeline.py).

    python _converter_info.py ARCHITECTURE
prints {"text": bool, "mmproj": bool, "mtp": bool}: whether a text model class and a
vision-projector class exist, and whether the text class takes --mtp/--no-mtp.
"""
import json
import sys

from conversion import get_model_class  # upstream's, via PYTHONPATH set by the caller

arch = sys.argv[1]
info = {"text": False, "mmproj": False, "mtp": False}
try:
    cls = get_model_class(arch)
    info["text"] = True
    info["mtp"] = bool(getattr(cls, "supports_mtp_export", False))
except NotImplementedError:
    pass
try:
    get_model_class(arch, mmproj=True)
    info["mmproj"] = True
except NotImplementedError:
    pass
print(json.dumps(info))
