"""FP16 and INT8 graphs from real videos: calibration sets, FP16 conversion with measured FP32 islands, Q/DQ
INT8 graphs, the accuracy gate, the atomic commit into the bundle.

Needs ``onnx`` and ``onnxruntime``'s quantization and transformers tools (the ``export`` extra); never torch
itself (NVIDIA Model Optimizer, the optional ``modelopt`` extra's INT8 quantizer, imports it).
"""
