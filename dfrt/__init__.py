"""dfrt: DynFocus-style video question answering on TensorRT and ONNX Runtime.

``import dfrt`` needs only the standard library and numpy; torch is imported by ``dfrt.model`` and
``dfrt.export`` alone.
"""

__version__ = "0.1.0"
