"""A bundle is untrusted input: every hostile file in it is one DfrtError line at Bundle.open (or before a
graph runs), never a traceback, native crash, hang or absurd allocation. Torch-free: a copy of the shipped
demo bundle, with per-test directories of hard links in which only the changed files are new."""

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfrt.errors import ConfigError, ContractError, DfrtError, InputError
from dfrt.jsonio import MAX_DEPTH, parse_json, read_json
from dfrt.manifest import MANIFEST_NAME, PromptTemplate
from dfrt.runtime.bundle import STAMP_NAME, Bundle, external_data
from dfrt.runtime.default_bundle import shipped_demo
from dfrt.runtime.question_tokenizer import QuestionTokenizer, load_definition
from dfrt.runtime.text import MAX_QUESTION_CHARS, clean_question

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

DEMO = shipped_demo()  # the package data of the installed dfrt (a checkout or a wheel)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One copy of the demo bundle, verified once (its stamp is never linked into per-test bundles)."""
    root = tmp_path_factory.mktemp("trust") / "demo"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns(STAMP_NAME))
    Bundle.open(root)
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def make_bundle(
    demo: Path, where: Path, manifest: dict | str | None = None, files: dict | None = None
) -> Path:
    """A bundle in ``where``: every demo file hard-linked (never written), ``files`` (name -> bytes) new and
    listed with their real size and sha256 unless ``manifest`` is given as text."""
    where.mkdir(parents=True, exist_ok=True)
    files = files or {}
    for path in demo.iterdir():
        if path.name not in (MANIFEST_NAME, STAMP_NAME, *files):
            os.link(path, where / path.name)
    data = _manifest(demo) if manifest is None else manifest
    for name, content in files.items():
        (where / name).write_bytes(content)
        if isinstance(data, dict):
            data["files"][name] = {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    (where / MANIFEST_NAME).write_text(data if isinstance(data, str) else json.dumps(data))
    return where


def refused(root: Path, match: str | None = None, verify: bool = False, error: type = ConfigError) -> str:
    with pytest.raises(error, match=match) as info:
        Bundle.open(root, verify=verify)
    message = str(info.value)
    assert "\n" not in message and len(message) < 1000
    return message


def _with_literal(data: dict, path: tuple, literal: str) -> str:
    """The manifest as text with the value at ``path`` replaced by raw JSON text (NaN, 1e400, ...)."""
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "@@LITERAL@@"
    return json.dumps(data).replace('"@@LITERAL@@"', literal)


# -- class 3: the bounded JSON reader ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "Infinity"),
        ('{"a": 1e400}', "out of range"),
        ('{"a": ' + "9" * 5000 + "}", "digits"),
        ('{"a": 1, "a": 2}', "duplicate key"),
        ('{"a": "\\ud800"}', "surrogates"),
        ('"' + '\\"' * 200_000, "not valid JSON"),
    ],
    ids=["deep", "nan", "infinity", "1e400", "huge int", "duplicate", "lone surrogate", "unterminated"],
)
def test_json_without_a_net_is_one_error(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_json(text, "x.json")
    assert str(info.value).startswith("x.json: ") and "\n" not in str(info.value)


def test_json_reader_never_reads_past_its_cap(tmp_path):
    path = tmp_path / "huge.json"
    with path.open("wb") as f:
        f.truncate(2 << 30)  # 2 GB, sparse
    tracemalloc.start()
    with pytest.raises(ConfigError, match="not a tokenizer file"):
        read_json(path, 1 << 20, "tokenizer file")
    assert tracemalloc.get_traced_memory()[1] < 4 << 20
    tracemalloc.stop()
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):  # opening it blocking would hang
        read_json(fifo, 1 << 20)


@pytest.mark.parametrize(
    ("path", "literal", "message"),
    [
        (("config", "vision", "width"), "NaN", "NaN"),
        (("config", "vision", "mlp_ratio"), "1e400", "out of range"),
        (("config", "vision", "width"), "9" * 30, "digits"),
        (("files", "vision.onnx", "bytes"), "-1", "count"),
        (("graphs", "vision", "contract", "atol"), "Infinity", "Infinity"),
    ],
)
def test_non_finite_and_huge_numbers_in_the_manifest(demo, tmp_path, path, literal, message):
    refused(make_bundle(demo, tmp_path / "b", _with_literal(_manifest(demo), path, literal)), message)


def test_a_deeply_nested_manifest_is_one_error(demo, tmp_path):
    data = _manifest(demo)
    refused(
        make_bundle(demo, tmp_path / "b", _with_literal(data, ("weights",), "[" * 100_000 + "]" * 100_000))
    )


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("config", "vision", "image_size"), 1 << 40, "multiple|outside"),
        (("config", "vision", "width"), 1 << 20, "outside"),
        (("config", "dpe", "kmeans_iters"), 10**12, "outside"),
        (("config", "dpe", "max_prototypes"), 10**9, "outside"),
        (("config", "qformer", "vocab_size"), 10**12, "outside"),
        (("config", "qformer", "max_question_tokens"), 10**6, "max_positions|outside"),
        (("config", "vision", "ln_eps"), 0.0, "outside"),
        (("config", "dpe", "key_ratio"), -1.0, "key_ratio"),
        (("config", "image_std"), [0.0, 0.0, 0.0], "image_std"),
        (("config", "llm_width"), -5, "outside"),
        (("config", "vision", "patch_size"), 0, "at least 1|outside"),
        (("config", "qformer", "heads"), 0, "at least 1|outside"),
        (("graphs", "scoring", "contract", "ranges", "prototypes"), [1, 8, 10**12], "range"),
        (("graphs", "scoring", "contract", "ranges", "prototypes"), [16, 8, 1], "range"),
        (("graphs", "scoring", "contract", "inputs", 0, "shape"), [["x"]], "dimension"),
        (("graphs", "scoring", "contract", "inputs", 0, "dtype"), "object", "dtype"),
        (("files", "llm.gguf", "bytes"), 1 << 50, "cap"),
        (("files", "tokenizer.json", "bytes"), 1 << 30, "cap"),
        (("files", "vision.onnx", "bytes"), 3 << 30, "cap"),
    ],
)
def test_sizes_are_capped_before_anything_is_allocated(demo, tmp_path, path, value, message):
    data = _manifest(demo)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    root = make_bundle(demo, tmp_path / "b", data)
    tracemalloc.start()
    refused(root, message)
    assert tracemalloc.get_traced_memory()[1] < 16 << 20
    tracemalloc.stop()


def test_the_stamp_is_bounded_and_damage_only_means_hashing(demo, tmp_path):
    root = make_bundle(demo, tmp_path / "b")
    Bundle.open(root)
    good = (root / STAMP_NAME).read_bytes()
    for damage in ("huge", "deep", "nan", "fifo"):
        (root / STAMP_NAME).unlink()
        if damage == "huge":
            with (root / STAMP_NAME).open("wb") as f:
                f.truncate(2 << 30)
        elif damage == "fifo":
            os.mkfifo(root / STAMP_NAME)
        else:
            (root / STAMP_NAME).write_text("[" * 100_000 if damage == "deep" else '{"manifest": NaN}')
        tracemalloc.start()
        Bundle.open(root)  # hashes again, no error
        assert tracemalloc.get_traced_memory()[1] < 64 << 20, damage
        tracemalloc.stop()
        if damage == "fifo":  # never opened, and never replaced (dfrt writes only regular files)
            assert stat.S_ISFIFO((root / STAMP_NAME).lstat().st_mode)
        else:
            assert (root / STAMP_NAME).read_bytes() == good  # replaced by a fresh one


# -- class 3: the prompt template ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt",
    [
        "{system} {0} {question} <image>",
        "{} {question} <image>",
        "{question.__class__} <image>",
        "{question!r} <image>",
        "{question:>999999999} <image>",
        "{question[0]} <image>",
        "{user} {question} <image>",
        "{question} <image> {",
        "{question} <image> }",
        "no question <image>",
        "{question} {question} <image>",
        "{system} {system} {question} <image>",
        "{question} no image",
        "{question} <image> <image>",
        "{question} <image> \ue000",
    ],
)
def test_prompt_templates_with_other_fields_are_refused(demo, tmp_path, fmt):
    data = _manifest(demo)
    data["prompt"]["format"] = fmt
    refused(make_bundle(demo, tmp_path / "b", data), "prompt template")


def test_prompt_system_text_and_stops_are_checked(demo, tmp_path):
    data = _manifest(demo)
    data["prompt"]["system"] = "see <image>"
    refused(make_bundle(demo, tmp_path / "a", data), "<image>")
    data = _manifest(demo)
    data["prompt"]["stop"] = ["x"] * 1000
    refused(make_bundle(demo, tmp_path / "b", data), "stop")
    assert PromptTemplate(name="gguf", format="{anything} goes", stop=()).name == "gguf"  # another check's


@pytest.mark.parametrize(
    "turn", ["{answer} {question} {system}", "{answer}", 7, "{answer} <image> {question}"]
)
def test_a_prompt_turn_is_checked_when_the_manifest_is_read(demo, tmp_path, turn):
    data = _manifest(demo)
    data["prompt"]["turn"] = turn
    refused(make_bundle(demo, tmp_path / "b", data), "turn" if isinstance(turn, str) else "prompt")


@FUZZ
@given(st.text(alphabet=st.sampled_from("{}!:.[]0 qustioneymagr<>"), max_size=40))
def test_any_prompt_format_is_accepted_only_if_it_renders_safely(fmt):
    try:
        template = PromptTemplate(name="t", system="S", format=fmt)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    text = template.format.format(system="S", question="{0}{x}")
    assert text.count("<image>") == 1 and text.count("{0}{x}") == 1


# -- the question tokenizer ----------------------------------------------------------------------------------
def _tokenizer() -> dict:
    return json.loads((DEMO / "tokenizer.json").read_text())


def _hostile_tokenizers() -> dict[str, tuple[callable, str]]:
    evil = "(a+)+$"  # catastrophic backtracking on "aaaa...b"
    split = {"type": "Split", "pattern": {"Regex": evil}, "behavior": "Isolated", "invert": False}
    replace = {"type": "Replace", "pattern": {"Regex": evil}, "content": ""}

    def set_(path, value):
        def change(t):
            node = t
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value

        return change

    return {
        "split regex": (set_(("pre_tokenizer",), split), "only BertPreTokenizer"),
        "sequence of splits": (
            set_(("pre_tokenizer",), {"type": "Sequence", "pretokenizers": [split]}),
            "only BertPreTokenizer",
        ),
        "replace normalizer": (set_(("normalizer",), replace), "only BertNormalizer"),
        "bpe model": (set_(("model", "type"), "BPE"), "only WordPiece"),
        "id beyond the vocabulary": (set_(("model", "vocab", "the"), 40_000), "vocabulary id"),
        "negative id": (set_(("model", "vocab", "the"), -1), "vocabulary id"),
        "added token beyond": (set_(("added_tokens", 0, "id"), 10**6), "added token id"),
        "special id beyond": (
            set_(("post_processor", "special_tokens", "[CLS]", "ids"), [10**6]),
            "special token id",
        ),
        "no truncation": (set_(("truncation",), None), "truncation"),
        "long truncation": (set_(("truncation", "max_length"), 100_000), "max_length"),
        "quadratic words": (set_(("model", "max_input_chars_per_word"), 10**9), "max_input_chars"),
        "unknown unk": (set_(("model", "unk_token"), "[NOPE]"), "unk_token"),
        "padding": (set_(("padding",), {"strategy": "BatchLongest"}), "padding"),
        "extra key": (set_(("model", "dropout"), 0.1), "unexpected key"),
        "template regex": (set_(("post_processor", "type"), "ByteLevel"), "TemplateProcessing"),
        "decoder": (set_(("decoder",), {"type": "Replace", "pattern": {"Regex": evil}}), "decoder"),
        "not an object": (set_(("model",), []), "model must be an object"),
        "missing key": (lambda t: t.pop("normalizer"), "missing 'normalizer'"),
        "undefined special": (
            set_(("post_processor", "single", 0, "SpecialToken", "id"), "[NOPE]"),
            "not defined",
        ),
    }


@pytest.mark.parametrize("case", list(_hostile_tokenizers()))
def test_hostile_tokenizer_definitions_are_refused(demo, tmp_path, case):
    change, message = _hostile_tokenizers()[case]
    data = _tokenizer()
    change(data)
    root = make_bundle(demo, tmp_path / "b", files={"tokenizer.json": json.dumps(data).encode()})
    text = refused(root, message, verify=True)
    assert "tokenizer.json" in text
    with pytest.raises(ConfigError):  # the runtime's own reader too, without a bundle
        QuestionTokenizer(root / "tokenizer.json", 30523, 256)


def test_a_catastrophic_regex_never_reaches_tokenizers(tmp_path):
    data = _tokenizer()
    data["pre_tokenizer"] = {
        "type": "Split",
        "pattern": {"Regex": "(a+)+$"},
        "behavior": "Isolated",
        "invert": False,
    }
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="not a dfrt question tokenizer"):
        QuestionTokenizer(path)
    assert time.perf_counter() - start < 5


def test_the_demo_tokenizer_passes_with_the_bundle_bounds():
    assert load_definition(DEMO / "tokenizer.json", 30523, 256)["model"]["type"] == "WordPiece"
    with pytest.raises(ConfigError, match="vocabulary id"):
        load_definition(DEMO / "tokenizer.json", 30000, 256)  # the vocabulary needs 30523


# -- questions that are not valid text -----------------------------------------------------------------------
def test_clean_question():
    assert clean_question("caf\udce9?") == "caf\ufffd?"  # an undecodable argv byte (surrogateescape)
    assert clean_question("\ud83d\ude00") == "\U0001f600"  # a surrogate pair joined
    assert clean_question("a\ud800b") == "a\ufffdb"
    assert clean_question("a\x00b\x1b[31mc\td\n") == "a b [31mc\td\n"
    assert len(clean_question("x" * (10 * MAX_QUESTION_CHARS))) == MAX_QUESTION_CHARS
    assert clean_question("What is the man doing?") == "What is the man doing?"
    for bad in (b"bytes", None, 3):
        with pytest.raises(InputError, match="must be text"):
            clean_question(bad)


@FUZZ
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200))
def test_any_question_tokenizes_within_the_contract(text):
    ids, mask = _demo_tokenizer()(text)
    assert (
        ids.dtype == np.int64 and 2 <= ids.shape[1] <= 256 and ids.max() < 30523 and mask.shape == ids.shape
    )


_TOKENIZER: list = []


def _demo_tokenizer() -> QuestionTokenizer:
    if not _TOKENIZER:
        _TOKENIZER.append(QuestionTokenizer(DEMO / "tokenizer.json", 30523, 256))
    return _TOKENIZER[0]


# -- class 5: every file a graph loads is listed and hashed --------------------------------------------------
def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _external_tensor(location: str, offset: int = 0, length: int = 16, swap: bool = False) -> bytes:
    entries = [("location", location), ("offset", str(offset)), ("length", str(length))]
    body = _field(1, 7) + _field(2, 1)  # dims [7], data_type FLOAT
    body += _field(8, b"w")  # name
    for key, value in entries:
        pair = (
            (_field(2, value.encode()), _field(1, key.encode()))
            if swap
            else (
                _field(1, key.encode()),
                _field(2, value.encode()),
            )
        )
        body += _field(13, b"".join(pair))
    return body + _field(14, 1)  # data_location EXTERNAL


def _model(tensor: bytes, where: str) -> bytes:
    """A ModelProto whose one external tensor sits in the graph's initializers, a Constant node's value, or
    the then-branch subgraph of an If node (onnx.proto field numbers)."""
    if where == "initializer":
        graph = _field(5, tensor)
    elif where == "constant":
        graph = _field(1, _field(5, _field(1, b"value") + _field(5, tensor)))
    else:  # a subgraph of an If node
        inner = _field(5, tensor)
        graph = _field(1, _field(5, _field(1, b"then_branch") + _field(6, inner)))
    return _field(1, 8) + _field(7, graph)  # ir_version 8, graph


@pytest.mark.parametrize("where", ["initializer", "constant", "subgraph"])
def test_external_data_references_are_found_without_onnx(tmp_path, where):
    path = tmp_path / "m.onnx"
    path.write_bytes(_model(_external_tensor("w.bin", 4, 28), where))
    assert external_data(path) == [("w.bin", 4, 28)]
    path.write_bytes(_model(_external_tensor("w.bin", swap=True), where))  # fields in another order
    assert external_data(path) == [("w.bin", 0, 16)]


def test_external_data_agrees_with_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [weight]))
    onnx.save_model(
        model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0
    )
    assert external_data(tmp_path / "m.onnx") == [("m.data", 0, 64)]


@pytest.mark.parametrize(
    ("location", "listed", "message"),
    [
        ("secret.bin", False, "does not list"),
        ("../secret.bin", False, "unsafe path"),
        ("/etc/passwd", False, "unsafe path"),
        ("*/_ORT_MEM_ADDR_/*", False, "unsafe path"),
        ("data.bin", True, None),
    ],
)
@pytest.mark.parametrize("where", ["initializer", "subgraph"])
def test_every_file_a_graph_loads_must_be_listed(demo, tmp_path, location, listed, message, where):
    graph = _model(_external_tensor(location), where)
    files = {"scoring.onnx": graph, **({location: b"\0" * 64} if listed else {})}
    root = make_bundle(demo, tmp_path / "b", files=files)
    if not listed and "/" not in location:
        (root / location).write_bytes(b"\0" * 64)  # present in the bundle, but never hashed
    if message is None:
        Bundle.open(root)  # listed and hashed: the bundle is accepted (the graph itself is a stub)
        return
    refused(root, message, verify=True)


def test_external_data_beyond_the_listed_file_is_refused(demo, tmp_path):
    graph = _model(_external_tensor("data.bin", offset=60, length=16), "initializer")
    root = make_bundle(demo, tmp_path / "b", files={"scoring.onnx": graph, "data.bin": b"\0" * 64})
    refused(root, "beyond its listed size", verify=True)


def test_a_damaged_graph_protobuf_is_one_error(demo, tmp_path):
    for i, data in enumerate(
        [b"\x0b\x00", b"\x3a\xff\xff\xff\xff\x0f", b"\xff" * 12, b"\x3a" + b"\x3a\x00" * 3]
    ):
        root = make_bundle(demo, tmp_path / str(i), files={"scoring.onnx": data})
        refused(root, "not a valid ONNX file", verify=True)


def test_info_verify_refuses_an_unlisted_external_file(demo, tmp_path):
    root = make_bundle(
        demo, tmp_path / "b", files={"scoring.onnx": _model(_external_tensor("x.bin"), "constant")}
    )
    (root / "x.bin").write_bytes(b"\0" * 64)
    result = _cli("info", "--bundle", root, "--verify")
    assert result.returncode == 1 and _one_error_line(result.stderr, "does not list")


# -- the graph's real inputs and outputs against the contract ------------------------------------------------
def _spec(name: str):
    return Bundle.open(DEMO, verify=False).manifest.graphs[name].spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: dataclasses.replace(t, dtype="float16"), "float16 in the contract"),
        (lambda t: dataclasses.replace(t, shape=(*t.shape, 1)), "rank"),
        (lambda t: dataclasses.replace(t, shape=(t.shape[0], 17, *t.shape[2:])), "shape"),
        (lambda t: dataclasses.replace(t, name="other"), "graph has inputs"),
    ],
)
def test_a_graph_that_disagrees_with_its_contract_is_refused(change, message):
    from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph

    spec = _spec("scoring")
    spec = dataclasses.replace(spec, inputs=(change(spec.inputs[0]),))
    with pytest.raises(ContractError, match=message) as info:
        OnnxRuntimeGraph(DEMO / "scoring.onnx", spec)
    assert "\n" not in str(info.value)


def test_a_graph_swapped_for_another_listed_one_is_refused_before_running(demo, tmp_path):
    from dfrt.runtime.loader import open_graphs

    swapped = (demo / "encoding.onnx").read_bytes()
    bundle = Bundle.open(make_bundle(demo, tmp_path / "b", files={"scoring.onnx": swapped}))
    with pytest.raises(ContractError, match=r"scoring\.onnx: graph has inputs"):
        open_graphs(bundle, "onnxruntime")


# -- class 8: onnxruntime's own lines stay off stderr --------------------------------------------------------
def test_out_of_vocabulary_ids_are_refused_before_onnxruntime(capfd):
    from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph

    graph = OnnxRuntimeGraph(DEMO / "question.onnx", _spec("question"))
    feed = {
        "tokens": np.zeros((1, 65, 128), np.float32),
        "input_ids": np.array([[101, 40_000, 102]]),
        "attention_mask": np.ones((1, 3), np.int64),
    }
    with pytest.raises(ContractError, match=r"input_ids holds 40000, outside \[0, 30523\)"):
        graph.run(feed)
    graph.spec = dataclasses.replace(
        graph.spec, inputs=tuple(dataclasses.replace(t, upper=None) for t in graph.spec.inputs)
    )
    with pytest.raises(DfrtError) as info:  # onnxruntime's own failure: one line, its log silenced
        graph.run(feed)
    assert "\n" not in str(info.value)
    assert "onnxruntime" not in capfd.readouterr().err


# -- the CLI: one `dfrt: error:` line ------------------------------------------------------------------------
def _cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "DFRT_CACHE_DIR": tempfile.mkdtemp()}
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _one_error_line(stderr: str, needle: str) -> bool:
    errors = [line for line in stderr.splitlines() if line.startswith("dfrt: error:")]
    return len(errors) == 1 and needle in errors[0] and "Traceback" not in stderr


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("deep manifest", "nested deeper"),
        ("nan size", "NaN"),
        ("prompt field", "prompt template"),
        ("regex", "Split"),
    ],
)
def test_cli_prints_one_error_line(demo, tmp_path, case, needle):
    data, files = _manifest(demo), {}
    if case == "deep manifest":
        data = _with_literal(data, ("weights",), "[" * 100_000 + "]" * 100_000)
    elif case == "nan size":
        data = _with_literal(data, ("config", "llm_width"), "NaN")
    elif case == "prompt field":
        data["prompt"]["format"] = "{question.__init__.__globals__} <image>"
    else:
        tokenizer = _tokenizer()
        tokenizer["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated"}
        files = {"tokenizer.json": json.dumps(tokenizer).encode()}
    root = make_bundle(demo, tmp_path / "b", data, files)
    info = _cli("info", "--bundle", root)
    assert info.returncode == 1 and _one_error_line(info.stderr, needle), info.stderr
    if case in ("deep manifest", "regex"):
        sample = Path(__file__).resolve().parents[2] / "samples" / "07-count.mp4"
        infer = _cli("infer", sample, "How many?", "--bundle", root)
        assert infer.returncode == 1 and _one_error_line(infer.stderr, needle), infer.stderr


# -- hypothesis: mutated manifest, stamp, tokenizer and prompt -----------------------------------------------
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


def _mutate(data, draw, rounds: int) -> None:
    for _ in range(rounds):
        node = data
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            if not isinstance(node[key], dict | list) or not node[key]:
                break
            node = node[key]
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()):
                del node[key]
            else:
                node[key] = draw(JSON)
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(JSON)


@FUZZ
@given(st.data())
def test_mutated_bundle_files_open_or_fail_with_one_line(demo, data):
    target = data.draw(st.sampled_from(["manifest", "prompt", "stamp", "tokenizer"]))
    manifest, files = _manifest(demo), {}
    if target == "manifest":
        _mutate(manifest, data.draw, data.draw(st.integers(1, 3)))
    elif target == "prompt":
        manifest["prompt"][data.draw(st.sampled_from(["format", "system", "name"]))] = data.draw(
            st.text(alphabet=st.sampled_from("{}<>image!:.[]0 questionsystem\n\ue000"), max_size=40)
        )
    elif target == "tokenizer":
        tokenizer = _tokenizer()
        vocab = tokenizer["model"].pop("vocab")
        _mutate(tokenizer, data.draw, data.draw(st.integers(1, 3)))
        if isinstance(tokenizer.get("model"), dict):
            tokenizer["model"]["vocab"] = vocab
        files["tokenizer.json"] = json.dumps(tokenizer).encode()
    base = demo.parent / "fuzz"
    base.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        root = make_bundle(demo, Path(tmp) / "b", manifest, files)
        if target == "stamp":
            stamp = data.draw(st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
            (root / STAMP_NAME).write_bytes(stamp)
        try:
            bundle = Bundle.open(root, verify=target == "stamp")
        except DfrtError as e:
            assert "\n" not in str(e) and len(str(e)) < 1000
            return
        tokenizer = QuestionTokenizer(bundle.path(bundle.manifest.tokenizer))
        ids, _ = tokenizer("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab, what is the man doing?")
        assert ids.max() < bundle.manifest.config.qformer.vocab_size
        prompt = bundle.manifest.prompt
        if prompt.name != "gguf":
            assert prompt.format.format(system="", question="q").count("<image>") == 1


def test_depth_limit_covers_real_bundle_files():
    assert MAX_DEPTH >= 8
    read_json(DEMO / MANIFEST_NAME, 4 << 20)
    read_json(DEMO / "tokenizer.json", 16 << 20)
