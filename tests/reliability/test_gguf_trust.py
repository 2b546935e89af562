"""GGUF files and their chat templates are untrusted: one ConfigError line naming the GGUF, never a crash,
a hang or unbounded memory.

Header checks run in Python before llama.cpp opens a file (dfrt.runtime.gguf_header); loading mutated files
runs in child processes, so an abort inside llama.cpp is a failed test, not a dead runner.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfrt.errors import ConfigError
from dfrt.manifest import PromptTemplate
from dfrt.runtime import llm as llm_module
from dfrt.runtime.default_bundle import shipped_demo
from dfrt.runtime.generate import build_prompt
from dfrt.runtime.gguf_header import read_gguf_header
from dfrt.runtime.llm import render_chat_template

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

ROOT = Path(__file__).resolve().parents[2]
DEMO_GGUF = shipped_demo() / "llm.gguf"
DEMO_BYTES = DEMO_GGUF.read_bytes()
HEADER_END = 11_663  # the demo GGUF's header and tensor table end here (checked below)

LOAD = textwrap.dedent(
    """
    import sys
    from dfrt.errors import DfrtError
    from dfrt.runtime.llm import LlamaModel
    try:
        with LlamaModel(sys.argv[1], n_ctx=64) as llm:
            llm.tokenize("hello", add_bos=True)
    except DfrtError as e:
        print(f"error: {e}")
        sys.exit(1)
    except BaseException as e:
        print(f"not a DfrtError: {type(e).__name__}: {e}")
        sys.exit(3)
    print("loaded")
    """
)


def _load_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOAD, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def _assert_clean_outcome(result: subprocess.CompletedProcess[str]) -> None:
    """Loaded, or one DfrtError line; never a crash (negative status), a traceback or native noise."""
    assert result.returncode in (0, 1), f"status {result.returncode}: {result.stdout}{result.stderr[-2000:]}"
    assert len(result.stdout.splitlines()) == 1, result.stdout
    assert result.stderr == "", result.stderr[-2000:]


def test_the_demo_header_ends_where_the_mutations_stop():
    header = read_gguf_header(DEMO_GGUF)
    assert header.version == 3 and header.n_tensors == 39 and header.context_length == 512
    keys = 21
    assert struct.unpack_from("<IQQ", DEMO_BYTES, 4) == (3, 39, keys)
    assert 0 < HEADER_END < len(DEMO_BYTES) and HEADER_END % 32 != 0  # tensor data starts aligned after it


def _with(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, offset, value)
    return bytes(patched)


CRAFTED = {
    "truncated in the header": DEMO_BYTES[:5000],
    "truncated in the tensor data": DEMO_BYTES[: len(DEMO_BYTES) // 2],
    "version 1": _with(DEMO_BYTES, 4, "<I", 1),
    "version 99": _with(DEMO_BYTES, 4, "<I", 99),
    "2**63 tensors": _with(DEMO_BYTES, 8, "<Q", 2**63),
    "2**64-1 keys": _with(DEMO_BYTES, 16, "<Q", 2**64 - 1),
    "first key 2**62 bytes long": _with(DEMO_BYTES, 24, "<Q", 2**62),
    "only the magic": b"GGUF" + b"\0" * 20,
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_headers_are_one_error_naming_the_file(tmp_path, case):
    path = tmp_path / "model.gguf"
    path.write_bytes(CRAFTED[case])
    with pytest.raises(ConfigError) as error:
        read_gguf_header(path)
    assert "model.gguf" in str(error.value) and "\n" not in str(error.value)
    result = _load_in_child(path)
    _assert_clean_outcome(result)
    assert result.returncode == 1 and "model.gguf" in result.stdout


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    offset=st.integers(0, HEADER_END - 1),
    mutation=st.one_of(
        st.binary(min_size=1, max_size=8),
        st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff\xff\xff\xff\xff", b"\x80"]),
    ),
    cut=st.one_of(st.none(), st.integers(24, HEADER_END + 4096)),
)
def test_mutated_headers_load_or_fail_with_one_line(tmp_path_factory, offset, mutation, cut):
    data = bytearray(DEMO_BYTES)
    data[offset : offset + len(mutation)] = mutation
    path = tmp_path_factory.mktemp("mutant") / "mutant.gguf"
    path.write_bytes(bytes(data[:cut] if cut else data))
    try:
        read_gguf_header(path)
    except ConfigError as e:
        assert "mutant.gguf" in str(e) and "\n" not in str(e)
        return  # refused in Python: llama.cpp never saw it
    _assert_clean_outcome(_load_in_child(path))  # accepted headers must not crash llama.cpp either
    shutil.rmtree(path.parent, ignore_errors=True)


# -- the chat template: untrusted Jinja --------------------------------------------------------------------

EVIL_TEMPLATES = {
    "endless nested loop": "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}"
    "{% endfor %}",
    "raise_exception": "{{ raise_exception('this model wants a system message') }}",
    "syntax error": "{% if messages %}{{ messages[0].content }",
    "undefined function": "{{ undefined_helper(messages) }}",
    "memory bomb": "{{ 'x' * 10000000000 }}",
    "huge output": "{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}",
    "sandbox escape": "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "too large": "{# padding #}" * 10_000,
}


@pytest.mark.parametrize("case", EVIL_TEMPLATES)
def test_evil_chat_templates_are_one_config_error_naming_the_gguf(monkeypatch, case):
    monkeypatch.setattr(llm_module, "TEMPLATE_SECONDS", 3.0)
    llm_module._render.cache_clear()
    start = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        render_chat_template(EVIL_TEMPLATES[case], [{"role": "user", "content": "q"}], "", "", "evil.gguf")
    message = str(error.value)
    assert message.startswith("evil.gguf: its chat template") and "\n" not in message, message
    assert time.perf_counter() - start < 30


class _StubLlm:
    """What build_prompt reads from a model: its metadata and its file name."""

    def __init__(self, template: str) -> None:
        self.metadata = {"tokenizer.chat_template": template}
        self.path = Path("/models/stub.gguf")


def test_build_prompt_names_the_gguf_whose_template_fails():
    expected = r"^stub\.gguf: its chat template cannot be rendered \(ValueError: no"
    with pytest.raises(ConfigError, match=expected):
        build_prompt(PromptTemplate(name="gguf"), "q", _StubLlm("{{ raise_exception('no') }}"))


def test_a_good_template_renders_as_before():
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    prompt = build_prompt(PromptTemplate(name="gguf"), "What moves?", _StubLlm(template))
    text = "".join(t for t, _ in prompt.before_image + prompt.after_image)
    assert text == "<|im_start|>user\n\nWhat moves?<|im_end|>\n<|im_start|>assistant\n"


# -- header values at their limits, chat templates llama-cpp-python compiles while loading ----------------


def _kv(key: str, kind: int, value: int | str) -> bytes:
    """One GGUF key-value pair: u32 (4), u64 (10) or string (8)."""
    name = key.encode()
    head = struct.pack("<Q", len(name)) + name + struct.pack("<I", kind)
    if kind == 8:
        text = str(value).encode()
        return head + struct.pack("<Q", len(text)) + text
    return head + struct.pack("<" + {4: "I", 10: "Q"}[kind], value)


def _with_metadata(changes: dict[str, tuple[int, int | str]]) -> bytes:
    """The demo GGUF with keys replaced or added (tensor data and offsets unchanged)."""
    from dfrt.runtime.gguf_header import _Reader

    r = _Reader(DEMO_BYTES, "demo")
    r.take(4, "magic")
    version, n_tensors, n_kv = r.scalar("I", "v"), r.scalar("Q", "t"), r.scalar("Q", "k")
    pairs = []
    for _ in range(int(n_kv)):
        start, key = r.pos, r.string("key")
        r.value(int(r.scalar("I", "type")), "value")
        if key not in changes:
            pairs.append(DEMO_BYTES[start : r.pos])
    pairs += [_kv(key, kind, value) for key, (kind, value) in changes.items()]
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(pairs)) + b"".join(pairs)
    head += DEMO_BYTES[r.pos : HEADER_END]  # the tensor table
    head += b"\0" * (-len(head) % 32)
    return head + DEMO_BYTES[-(-HEADER_END // 32) * 32 :]


LIMITS = {  # llama-cpp-python sized a tokenize buffer by it: 2**32-1 read as -1, "internal error" before
    "u32 max": 2**32 - 1,
    "2**31": 2**31,
    "2**24 + 1": 2**24 + 1,
}


@pytest.mark.parametrize("case", LIMITS)
def test_a_trained_context_at_an_integer_limit_is_one_error_naming_the_gguf(tmp_path, case):
    path = tmp_path / "ctx.gguf"
    path.write_bytes(_with_metadata({"llama.context_length": (4, LIMITS[case])}))
    with pytest.raises(ConfigError, match=r"^ctx\.gguf: its trained context \(llama\.context_length\) is"):
        read_gguf_header(path)
    result = _load_in_child(path)  # loads and tokenizes: the path that failed before the check
    _assert_clean_outcome(result)
    assert result.returncode == 1 and "ctx.gguf: its trained context" in result.stdout


def test_the_largest_trained_context_accepted_still_loads(tmp_path):
    path = tmp_path / "ctx.gguf"
    path.write_bytes(_with_metadata({"llama.context_length": (4, 2**24)}))
    assert read_gguf_header(path).context_length == 2**24
    result = _load_in_child(path)
    _assert_clean_outcome(result)
    assert result.returncode == 0 and result.stdout.strip() == "loaded"


@pytest.mark.parametrize("key", ["tokenizer.chat_template", "tokenizer.chat_template.tool_use"])
def test_a_gguf_chat_template_with_a_jinja_syntax_error_is_one_error_line(tmp_path, key):
    path = tmp_path / "tmpl.gguf"
    path.write_bytes(_with_metadata({key: (8, EVIL_TEMPLATES["syntax error"])}))
    read_gguf_header(path)  # a valid header: llama-cpp-python compiles the template while loading
    result = _load_in_child(path)
    _assert_clean_outcome(result)
    assert result.returncode == 1, result.stdout
    expected = "error: tmpl.gguf: its chat template cannot be compiled (TemplateSyntaxError"
    assert result.stdout.startswith(expected), result.stdout
