"""An answer as the JSON document of ``dfrt infer --json`` (stable snake_case keys)."""

from __future__ import annotations

from typing import Any

from dfrt.runtime.pipeline import InferenceResult, Pipeline


def answer_document(pipe: Pipeline, result: InferenceResult, question: str, total: float) -> dict[str, Any]:
    """The answer, the video, this question's key frames and per-frame scores, tokens, timings, backend."""
    video, visual, answer = result.video, result.visual, result.answer
    sampled = video.sampled
    scores = result.frame_scores()
    keys = set(visual.selection.key_frames.tolist())

    def score(i: int) -> float | None:
        return None if scores is None else round(float(scores[i]), 6)

    return {
        "answer": answer.text,
        "stop_reason": answer.stop_reason,
        "question": question,
        "video": {
            "path": str(sampled.path),
            "sampled_frames": sampled.num_frames,
            "decoded_frames": sampled.decoded_frames,
            "source_fps": sampled.source_fps,
        },
        "key_frames": [
            {"frame": int(i), "time": round(float(sampled.timestamps[i]), 3), "score": score(int(i))}
            for i in visual.selection.key_frames
        ],
        "frames": [
            {"time": round(float(t), 3), "score": score(i), "key": i in keys, "tokens": int(n)}
            for i, (t, n) in enumerate(zip(sampled.timestamps, visual.tokens_per_frame, strict=True))
        ],
        "tokens": {
            "visual": answer.visual_tokens,
            "prompt": answer.prompt_tokens,
            "generated": answer.generated_tokens,
            "question_dropped": answer.question_tokens_dropped,
            "all_patches_equivalent": sampled.num_frames * pipe.config.vision.num_patches,
        },
        "visual_token_budget": None
        if video.plan is None
        else {
            "budget": video.plan.budget,
            "frames_kept": video.plan.frames,
            "key_frames": video.plan.key_frames,
            "visual_tokens": answer.visual_tokens,
            "unused_because": video.plan.unused or None,
        },
        "timings": {k: round(v, 4) for k, v in {**result.timings, "total": total}.items()},
        "decode_tokens_per_second": round(answer.decode_tokens_per_second, 2),
        "bundle": str(pipe.bundle.root),
        "backend": pipe.backend,
        "precision": pipe.precision,
        "providers": pipe.providers,
    }
