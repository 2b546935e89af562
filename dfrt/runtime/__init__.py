"""The deployable runtime: video decode, graph backends, frame selection, LLM bridge.

Imports neither torch nor onnx: this is what ships to a Jetson.
"""
