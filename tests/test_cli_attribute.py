"""The ``failtrace attribute`` / ``demo`` commands: outputs, and one-line errors with non-zero exit on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from failtrace.cli import main

pytestmark = pytest.mark.model


def test_attribute_writes_json_html_png(tmp_path, bundled, capsys):
    out = tmp_path / "o"
    code = main(["attribute", "--prompt", "What is the capital of France?", "--chat", "--answer-prefix",
                 "The capital of France is", "--target", " Paris", "--contrast", " Lyon", "--json",
                 str(out / "a.json"), "--html", str(out / "a.html"), "--png", str(out / "a.png"), "--quiet"])
    assert code == 0
    rec = json.loads((out / "a.json").read_text())
    assert rec["target"]["text"] == " Paris" and rec["contrast"]["text"] == " Lyon"
    assert len(rec["hidden_relevance"]) == 31 and len(rec["input_relevance"]) == len(rec["tokens"])
    assert "Paris" in (out / "a.html").read_text()
    assert (out / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("objective, name", [("max_logit", "ℓ(target)"), ("topk_mean", "ℓ(target) − top-k mean"),
                                             ("vocab_mean", "ℓ(target) − vocabulary mean")])
def test_an_objective_other_than_the_logit_difference_is_named_as_itself(objective, name, tmp_path, bundled, capsys):
    """The panel, the HTML page and the PNG's title name the value explained by its own symbol: with
    --objective max_logit they called ℓ(target) "Δℓ", a difference there is no contrast for."""
    out = tmp_path / "o"
    assert main(["attribute", "--prompt", "The capital of France is", "--objective", objective, "--html",
                 str(out / "a.html"), "--json", str(out / "a.json")]) == 0
    panel = capsys.readouterr().out
    value = json.loads((out / "a.json").read_text())["delta_logit"]
    assert "Δℓ" not in panel and f"{value:.4f}" in panel
    assert f"{name} " in panel and f"of {name})" in panel  # the row's label and the input's share
    page = (out / "a.html").read_text()
    assert "Δℓ" not in page and f"of {name}" in page


@pytest.mark.parametrize("method, extra", [("cp-lrp", []), ("gradxinput", []), ("ig", ["--ig-steps", "3"]),
                                           ("attention", [])])
def test_attribute_method_option_reaches_the_method(method, extra, tmp_path, bundled):
    """``--method`` (and ``--ig-steps``) reach the computation: the JSON's relevance equals ``failtrace.attribute``
    with that method, and differs from the default method's (a command that ignored the option would give AttnLRP)."""
    import numpy as np

    import failtrace

    prompt = "The capital of France is"
    out = tmp_path / f"{method}.json"
    assert main(["attribute", "--prompt", prompt, "--target", " Paris", "--contrast", " Lyon", "--method", method,
                 *extra, "--json", str(out), "--quiet"]) == 0
    rec = json.loads(out.read_text())
    options = {"ig_steps": 3} if method == "ig" else {}
    direct = failtrace.attribute(bundled, prompt, target=" Paris", contrast=" Lyon", method=method, **options)
    default = failtrace.attribute(bundled, prompt, target=" Paris", contrast=" Lyon")
    np.testing.assert_allclose(rec["input_relevance"], direct.input_relevance, rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(rec["input_relevance"]) - default.input_relevance).max() > 1e-3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", " Paris", "--contrast", " Paris"], "same token"),
        (["--target", " Paris is lovely", "--contrast", " Lyon"], "exactly one token"),
        (["--target", " Paris", "--contrast", " Lyon", "--position", "500"], "out of range"),
        (["--target", " Paris", "--contrast", " Lyon", "--position", "-500"], "(valid 0..4, or -5..-1 counting"),
        (["--target", " Paris", "--contrast", " Lyon", "--objective", "max_logit"],
         "objective 'max_logit' does not use a contrast token; drop --contrast"),
        (["--target", " Paris", "--contrast", " Lyon", "--method", "magic"], "unknown method"),
        (["--target", " Paris", "--contrast", " Lyon", "--model", "/no/such/model.gguf"], "not found"),
    ],
)
def test_bad_input_is_one_line_error(args, message, capsys, bundled):
    code = main(["attribute", "--prompt", "The capital of France is", "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_empty_prompt(capsys):
    assert main(["attribute", "--prompt", "  ", "--target", "a", "--contrast", "b"]) == 2
    assert "empty" in capsys.readouterr().err


def _run(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "failtrace.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_unknown_hub_model_gets_clear_error_in_a_real_process():
    res = _run(["attribute", "--model", "no-such-org/no-such-model", "--prompt", "hi", "--target", "a",
                "--contrast", "b"])
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "cannot load model" in res.stderr and "local folder" in res.stderr


def test_unsupported_architecture_from_local_folder(tmp_path: Path, bundled):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=len(bundled.tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64)
    tf.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    bundled.tokenizer.save_pretrained(tmp_path / "gpt2")
    res = _run(["attribute", "--model", str(tmp_path / "gpt2"), "--prompt", "The capital of France is",
                "--target", " Paris", "--contrast", " Lyon"])
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "not supported" in res.stderr
    # gradient × input needs no LRP rule: it explains GPT-2 too (README, limits). Its Δℓ is the model's own, and each
    # token's relevance is its token embedding times the plain autograd gradient there (not the first layer's input,
    # which adds GPT-2's position embeddings: the graph's state 0, not the input relevance)
    out = tmp_path / "g.json"
    res = _run(["attribute", "--model", str(tmp_path / "gpt2"), "--prompt", "The capital of France is",
                "--target", " Paris", "--contrast", " Lyon", "--method", "gradxinput", "--json", str(out), "-q"])
    assert res.returncode == 0, res.stderr
    rec = json.loads(out.read_text())
    model = tf.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    emb = model.get_input_embeddings()(torch.tensor([rec["token_ids"]])).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb).logits[0, -1].double()
    delta = logits[rec["target"]["id"]] - logits[rec["contrast"]["id"]]
    delta.backward()
    assert rec["delta_logit"] == pytest.approx(float(delta.detach()), abs=1e-5)
    want = (emb.double() * emb.grad.double()).sum(-1)[0].detach()
    assert rec["input_relevance"] == pytest.approx(want.tolist(), abs=1e-6 * float(want.abs().max()))


def test_help_everywhere():
    for cmd in ([], ["attribute"], ["demo"]):
        res = _run([*cmd, "--help"])
        assert res.returncode == 0 and "Usage" in res.stdout
