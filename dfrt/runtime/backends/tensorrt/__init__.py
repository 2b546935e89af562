"""TensorRT in one place: the per-GPU engine cache, the engine builder, device memory and the runner.

``tensorrt`` and the CUDA bindings are imported inside functions only: importing this package is cheap.
"""
