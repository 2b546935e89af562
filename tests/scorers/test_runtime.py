"""The scorer runtime without torch: imports, untrusted tokenizer files, FrameScorer with stand-in graphs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dfrt.errors import ConfigError, ContractError, InputError
from dfrt.scorers.spec import IMAGE_GRAPH, TEXT_GRAPH, ScorerSpec

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def test_runtime_and_selection_import_without_torch_onnx_or_transformers() -> None:
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "onnxscript", "transformers"):
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import dfrt.scorers.runtime, dfrt.scorers.selection, dfrt.scorers.spec
        loaded = sorted(m for m in ("torch", "onnx", "transformers") if m in sys.modules)
        print("loaded:", loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded: []"


def word_tokenizer(words: list[str], clip: bool = False) -> dict:
    """A tokenizer.json as the ``tokenizers`` library writes it: a word-level vocabulary; CLIP-style
    (lowercase, CLIP's Split regex, start and end of text) or SigLIP-style (whitespace, end of text)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    specials = ["<pad>", "<|startoftext|>", "<unk>", "<|endoftext|>"] if clip else ["<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate([*specials, *words])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    if clip:
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True)
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>",
            special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 3)],
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", 1)]
        )
    return json.loads(tokenizer.to_str())


WORDS = ["what", "is", "the", "dog", "doing", "in", "video", "?", "a", "cat"]


def spec_for(kind: str, **changes: object) -> ScorerSpec:
    values = dict(
        kind=kind,
        image_size=16,
        resize_size=16 if kind == "siglip" else 20,
        resize="squash" if kind == "siglip" else "crop",
        interpolation="bicubic",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        text_length=8,
        text_cleanup="siglip" if kind == "siglip" else "none",
        pad_id=0,
        vocab_size=64,
        embed_dim=6,
        logit_scale=10.0,
        logit_bias=-5.0 if kind == "siglip" else 0.0,
    )
    values.update(changes)
    return ScorerSpec(**values)  # type: ignore[arg-type]


class StandIn:
    """A graph runner that checks the contract, then returns fixed-seed normalised embeddings."""

    def __init__(self, spec: ScorerSpec, name: str) -> None:
        self.contract, self.dim, self.calls = spec.graph_specs()[name], spec.embed_dim, []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.contract.check_inputs(inputs)
        array = next(iter(inputs.values()))
        self.calls.append(array)
        rows = array.shape[0]
        seed = int(np.abs(array).sum() * 1000) % (1 << 31)
        out = np.random.default_rng(seed).standard_normal((rows, self.dim)).astype(np.float32)
        return {self.contract.output_names[0]: out / np.linalg.norm(out, axis=1, keepdims=True)}


def scorer_for(tmp_path: Path, kind: str, **changes: object):  # type: ignore[no-untyped-def]
    from dfrt.scorers.runtime import FrameScorer

    spec = spec_for(kind, **changes)
    path = tmp_path / "scorer_tokenizer.json"
    path.write_text(json.dumps(word_tokenizer(WORDS, clip=kind == "clip")))
    return FrameScorer(spec, StandIn(spec, IMAGE_GRAPH), StandIn(spec, TEXT_GRAPH), path)


def test_siglip_questions_are_canonicalised_and_padded(tmp_path: Path) -> None:
    scorer = scorer_for(tmp_path, "siglip")
    ids = scorer.tokenize("What is the DOG doing, in the video?!")
    assert ids.dtype == np.int64 and ids.shape == (1, 8)
    # lowercased, punctuation dropped, truncated to 8 tokens with </s> last
    assert ids.tolist() == [[3, 4, 5, 6, 7, 8, 5, 1]]
    assert scorer.tokenize("a cat").tolist() == [[11, 12, 1, 0, 0, 0, 0, 0]]  # padded with pad_id
    embed = scorer.text_embedding("a cat")
    assert embed.shape == (6,) and abs(float(np.linalg.norm(embed)) - 1) < 1e-5


def test_clip_questions_are_unpadded_and_end_with_end_of_text(tmp_path: Path) -> None:
    scorer = scorer_for(tmp_path, "clip")
    assert scorer.tokenize("A cat?").tolist() == [[1, 12, 13, 11, 3]]
    long = scorer.tokenize("what is the dog doing in the video " * 5)
    assert long.shape == (1, 8) and long[0, 0] == 1 and long[0, -1] == 3


def test_image_embeddings_run_in_chunks_within_the_contract(tmp_path: Path) -> None:
    scorer = scorer_for(tmp_path, "clip")
    frames = np.random.default_rng(0).integers(0, 256, (37, 30, 40, 3), dtype=np.uint8)
    embeds = scorer.image_embeddings(frames)
    assert embeds.shape == (37, 6) and embeds.dtype == np.float32
    assert [c.shape[0] for c in scorer.image_runner.calls] == [16, 16, 5]
    assert scorer.image_runner.calls[0].shape[1:] == (3, 16, 16)
    relevance = scorer.relevance(embeds, scorer.text_embedding("a dog"))
    assert relevance.shape == (37,) and np.all(np.abs(relevance) <= 1 + 1e-5)
    probabilities = scorer_for(tmp_path, "siglip").probabilities(relevance)
    assert np.all((probabilities > 0) & (probabilities < 1))
    assert np.array_equal(np.argsort(probabilities), np.argsort(relevance))  # monotone in the cosine


def test_preprocessing_matches_the_processors_geometry(tmp_path: Path) -> None:
    """A frame whose halves differ: SigLIP squashes (both halves kept), CLIP crops the centre."""
    frame = np.zeros((1, 20, 40, 3), dtype=np.uint8)
    frame[:, :, 20:] = 255
    squash = scorer_for(tmp_path, "siglip").preprocess(frame)
    assert (
        squash.shape == (1, 3, 16, 16)
        and squash[0, 0, :, 0].max() == -1.0
        and squash[0, 0, :, -1].min() == 1.0
    )
    crop = scorer_for(tmp_path, "clip", resize_size=16).preprocess(frame)  # 20x40 -> 16x32, centre 16x16
    assert crop.shape == (1, 3, 16, 16) and crop[0, 0, :, 0].max() == -1.0 and crop[0, 0, :, -1].min() == 1.0


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 8, 8), np.uint8),
        np.zeros((2, 8, 8, 3), np.float32),
        np.zeros((0, 8, 8, 3), np.uint8),
        [1],
    ],
)
def test_bad_frames_are_input_errors(tmp_path: Path, frames: object) -> None:
    with pytest.raises(InputError):
        scorer_for(tmp_path, "siglip").image_embeddings(frames)  # type: ignore[arg-type]


def test_a_graph_returning_the_wrong_shape_is_a_contract_error(tmp_path: Path) -> None:
    scorer = scorer_for(tmp_path, "siglip", embed_dim=5)
    scorer.text_runner.dim = 7
    with pytest.raises(ContractError, match="scorer_text"):
        scorer.text_embedding("a cat")


def _hostile(change):  # type: ignore[no-untyped-def]
    def apply(data: dict) -> dict:
        change(data)
        return data

    return apply


HOSTILE_TOKENIZERS = {
    "nested quantifier": _hostile(
        lambda d: d.update(
            pre_tokenizer={
                "type": "Split",
                "pattern": {"Regex": "(a+)+$"},
                "behavior": "Removed",
                "invert": False,
            }
        )
    ),
    "alternation under star": _hostile(
        lambda d: d.update(normalizer={"type": "Replace", "pattern": {"Regex": "(a|a?)*b"}, "content": " "})
    ),
    "back reference": _hostile(
        lambda d: d.update(
            pre_tokenizer={
                "type": "Split",
                "pattern": {"Regex": r"(a)\1"},
                "behavior": "Removed",
                "invert": False,
            }
        )
    ),
    "unknown component": _hostile(lambda d: d.update(pre_tokenizer={"type": "Python"})),
    "unknown model": _hostile(lambda d: d["model"].update(type="Custom")),
    "id beyond the vocabulary": _hostile(lambda d: d["model"]["vocab"].update(far=64)),
    "added token beyond": _hostile(lambda d: d["added_tokens"].append({"id": 99, "content": "x"})),
    "no model": _hostile(lambda d: d.pop("model")),
}


@pytest.mark.parametrize("change", HOSTILE_TOKENIZERS.values(), ids=HOSTILE_TOKENIZERS.keys())
def test_hostile_tokenizers_are_one_config_error(tmp_path: Path, change) -> None:  # type: ignore[no-untyped-def]
    from dfrt.scorers.runtime import load_tokenizer

    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(change(word_tokenizer(WORDS, clip=True))))
    with pytest.raises(ConfigError) as info:
        load_tokenizer(path, spec_for("clip"))
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe", b"[]", b"1" * 100])
def test_unreadable_tokenizers_are_one_config_error(tmp_path: Path, content: bytes) -> None:
    from dfrt.scorers.runtime import load_tokenizer

    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        load_tokenizer(path, spec_for("clip"))


def test_tokenizer_size_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dfrt.scorers import runtime

    monkeypatch.setattr(runtime, "MAX_TOKENIZER_BYTES", 100)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(word_tokenizer(WORDS)))
    with pytest.raises(ConfigError, match="bytes"):
        runtime.load_tokenizer(path, spec_for("siglip"))


@pytest.mark.parametrize(
    "pattern",
    [
        CLIP_SPLIT,
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",  # GPT-2
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",  # Llama 3 (start)
        r"\s+",
    ],
)
def test_real_tokenizer_regexes_are_accepted(pattern: str) -> None:
    from dfrt.scorers.runtime import _check_regex

    _check_regex(pattern)
