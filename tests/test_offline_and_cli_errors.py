"""Nothing reaches for the network at run time (#21 6i); CLI errors are one line with exit code 2 and a
traceback only with --debug (#21 6f)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import drivedistill
from drivedistill.cli import main

SRC = Path(drivedistill.__file__).parent


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                out.append((path, node))
    return out


def test_every_from_pretrained_is_local_only() -> None:
    calls = _calls("from_pretrained")
    assert calls, "the scan found no from_pretrained call: is SRC right?"
    remote = [
        f"{p.relative_to(SRC)}:{c.lineno}"
        for p, c in calls
        if not any(
            k.arg == "local_files_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in c.keywords
        )
    ]
    assert not remote, f"from_pretrained without local_files_only=True: {remote}"


def test_timm_backbones_are_not_downloaded() -> None:
    for path, call in _calls("create_model"):
        pretrained = [k for k in call.keywords if k.arg == "pretrained"]
        assert pretrained and isinstance(pretrained[0].value, ast.Constant), f"{path}:{call.lineno}"
        assert pretrained[0].value.value is False, f"{path}:{call.lineno}"


def test_tokenizer_load_does_not_reach_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from drivedistill.models.vlm.tokenizer import build_tokenizer, load_tokenizer

    build_tokenizer().save_pretrained(str(tmp_path))
    seen: list[dict[str, object]] = []
    original = transformers.AutoTokenizer.from_pretrained

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    load_tokenizer(tmp_path)
    assert seen and all(k.get("local_files_only") is True for k in seen)


def test_config_error_is_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["train", "--student", "ego_mlp", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("drivedistill train: error:")
    assert str(tmp_path / "none") in err


def test_unknown_component_and_bad_value_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--student", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown student 'nope'" in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    args = ["train", "--student", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    plain = subprocess.run([sys.executable, "-m", "drivedistill.cli", *args], capture_output=True, text=True)
    debug = subprocess.run(
        [sys.executable, "-m", "drivedistill.cli", *args, "--debug"], capture_output=True, text=True
    )
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and len(plain.stderr.splitlines()) == 1
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_an_unexpected_exception_is_an_internal_error_line() -> None:
    from drivedistill.cli import error_line

    line, code = error_line("run", ZeroDivisionError("division by zero"))
    assert code == 1 and "internal error (ZeroDivisionError)" in line and "--debug" in line
