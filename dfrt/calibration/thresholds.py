"""The accuracy gate's default thresholds per precision. No imports: the CLI's parser reads them."""

MIN_COSINE = 0.99  # INT8: visual-embedding cosine against FP32, every held-out (video, question) pair
MIN_KEY_AGREEMENT = 0.90  # INT8: share of FP32 key frames kept
THRESHOLDS = {"int8": (MIN_COSINE, MIN_KEY_AGREEMENT), "fp16": (0.999, 1.0)}  # (cosine, key agreement)
