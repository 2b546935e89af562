"""Training-free, question-aware frame scoring with a separate dual encoder (SigLIP, SigLIP2, CLIP).

- :mod:`dfrt.scorers.spec`: what a bundle records of its scorer and the two graph contracts (stdlib, numpy).
- :mod:`dfrt.scorers.export`: a Hugging Face SigLIP/CLIP directory -> two ONNX towers + tokenizer (torch).
- :mod:`dfrt.scorers.runtime`: frames and a question -> embeddings and relevance (onnxruntime, no torch).
- :mod:`dfrt.scorers.selection`: relevance -> which frames to keep (dpe, bolt, aks, uniform; numpy).

Nothing is imported here, so each side loads only what it needs.
"""
