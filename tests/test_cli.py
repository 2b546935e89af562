import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


def _dfrt(*args):
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", *args], capture_output=True, text=True, check=False
    )


def test_info_json_is_one_document():
    result = _dfrt("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["configs"]["paper"]["tokens_32_frames"] == 604
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]


def test_usage_error_exits_2():
    result = _dfrt("frobnicate")
    assert result.returncode == 2


def test_info_summarises_a_bundle(tiny_bundle):
    result = _dfrt("info", "--bundle", str(tiny_bundle), "--verify", "--json")
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)["bundle"]
    assert bundle["config"] == "tiny" and bundle["verified"] and bundle["llm"] is None
    assert set(bundle["graphs"]) == {"vision", "scoring", "encoding", "question", "fusion"}
    text = _dfrt("info", "--bundle", str(tiny_bundle))
    assert "bundle" in text.stdout and "vision:" in text.stdout


def test_info_on_a_missing_bundle_is_one_error_line(tmp_path):
    result = _dfrt("info", "--bundle", str(tmp_path / "nope"))
    assert result.returncode == 1 and result.stderr.startswith("dfrt: error: bundle not found")


def test_export_out_that_is_a_file_is_one_error_line(tmp_path):
    (tmp_path / "bundle").write_text("a file")
    result = _dfrt("export", "--config", "tiny", "--out", str(tmp_path / "bundle"))
    assert result.returncode == 1 and result.stderr.strip() == (
        f"dfrt: error: --out {tmp_path / 'bundle'} exists and is not a directory"
    )


def test_timeline_that_is_a_directory_is_refused_before_any_work(tmp_path):
    result = _dfrt("infer", "video.mp4", "q", "--timeline", str(tmp_path))
    assert result.returncode == 1 and "is a directory" in result.stderr and "Traceback" not in result.stderr


def test_an_unexpected_exception_is_one_line_and_exit_70(monkeypatch, capsys, caplog):
    """The last net: a bug still prints one line (the traceback only with -v) and exits 70."""
    from dfrt import cli
    from dfrt.commands import info

    def broken(args):
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(info, "run", broken)
    assert cli.main(["info"]) == cli.INTERNAL_ERROR == 70
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "dfrt: internal error: RuntimeError: something unexpected (run with -v for the traceback)"
    ]
    assert cli.main(["-v", "info"]) == 70
    assert "Traceback" in caplog.text and "RuntimeError" in caplog.text  # -v: the traceback is logged


def _options():
    """(verb, flag, rendered help) of every option of every command."""
    import argparse

    from dfrt.cli import build_parser

    parser = build_parser(None)
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for verb, sub in verbs.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield verb, action, formatter._expand_help(action) if action.help else ""


def test_every_option_of_every_command_shows_its_default_in_help():
    missing = [
        f"{verb} {action.option_strings[-1]}"
        for verb, action, text in _options()
        if action.nargs != 0 and not action.required and "default" not in text.lower()
    ]
    assert not missing, f"options whose --help hides the default: {missing}"


def test_verbose_is_accepted_after_the_verb_too(capsys):
    from dfrt.cli import main

    for argv in (["-v", "info", "--json"], ["info", "--json", "-v"], ["info", "-v", "--json"]):
        assert main(argv) == 0
        capsys.readouterr()
    assert main(["infer", "no-such-video.mp4", "What?", "-v"]) == 1
    assert "run with -v" not in capsys.readouterr().err
