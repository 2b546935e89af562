"""INT8 by explicit quantization: calibration sets from real videos, Q/DQ graphs, the accuracy gate.

Needs ``onnx`` and ``onnxruntime``'s quantization tools (the ``export`` extra); never torch.
"""
