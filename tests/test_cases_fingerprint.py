"""Model content fingerprints: equal for equal content wherever it lives, different for other weights or dtype."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from failtrace.models.fingerprint import file_digest, model_fingerprint, tensors_digest, weight_files
from failtrace.models.loading import load_model
from failtrace_testkit.toy import save_toy_model, toy_loaded


@pytest.fixture(autouse=True)
def _cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAILTRACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_file_digest_is_sha256_of_the_bytes_and_follows_replacement(tmp_path: Path) -> None:
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"abc" * 1000)
    assert file_digest(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert file_digest(f) == hashlib.sha256(b"abc" * 1000).hexdigest()  # cached, same answer
    f.write_bytes(b"abd" * 1000)  # same size, same path: another file
    assert file_digest(f) == hashlib.sha256(b"abd" * 1000).hexdigest()


def test_same_content_same_fingerprint_other_file_at_same_path_differs(tmp_path: Path) -> None:
    folder = save_toy_model(tmp_path / "m", seed=0)
    a = load_model(str(folder), progress=False)
    assert weight_files(a) == [folder / "model.safetensors"]
    fp0 = model_fingerprint(a)
    assert len(fp0) == 32 and model_fingerprint(load_model(str(folder), progress=False)) == fp0
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(folder, copy)
    assert model_fingerprint(load_model(str(copy), progress=False)) == fp0  # the path a user typed does not count
    save_toy_model(folder, seed=1)  # a different model written to the same path
    b = load_model(str(folder), progress=False)
    fp1 = model_fingerprint(b)
    assert fp1 != fp0
    with torch.no_grad():  # and the weights really are different
        assert not torch.equal(a.model.lm_head.weight, b.model.lm_head.weight)
    assert model_fingerprint(load_model(str(folder), dtype="bfloat16", progress=False)) != fp1


def test_in_memory_models_hash_their_tensors() -> None:
    a, b, c = toy_loaded(0), toy_loaded(0), toy_loaded(1)
    assert model_fingerprint(a) == model_fingerprint(b) != model_fingerprint(c)
    before = tensors_digest(a.model)
    with torch.no_grad():
        a.model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-6
    assert tensors_digest(a.model) != before and model_fingerprint(a) != model_fingerprint(b)
