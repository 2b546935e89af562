"""From PyTorch to a bundle: graph export, parity, question vocabulary, GGUF conversion, the bundle writer.

Needs the ``export`` extra (torch, onnx); never imported by the runtime.
"""
