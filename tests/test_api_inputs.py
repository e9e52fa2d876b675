"""The Python API's inputs: what a caller may pass (a Path for a model, an int position) and the one clear error
for anything else (a FailtraceError, never a TypeError from deep inside)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from failtrace.models.fingerprint import model_fingerprint
from failtrace.models.loading import load_model
from failtrace_testkit.toy import save_toy_model

def test_a_model_folder_given_as_a_path_object_loads_as_its_string(tmp_path: Path) -> None:
    """load_model(pathlib.Path) was AttributeError ('PosixPath' has no 'strip'); a number is one clear error."""
    from failtrace.errors import FailtraceError

    folder = save_toy_model(tmp_path / "m", seed=0)
    by_path, by_text = load_model(Path(folder), progress=False), load_model(str(folder), progress=False)
    assert model_fingerprint(by_path) == model_fingerprint(by_text) and by_path.source == by_text.source
    with pytest.raises(FailtraceError, match="a model is named by a string or a path .*not int 5"):
        load_model(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("position", [True, 1.5, "2"])
def test_a_position_that_is_no_token_index_is_refused(position: object) -> None:
    """attribute(position=True) explained token 1; 1.5 and "2" were TypeErrors from list slicing."""
    from failtrace.attribution.inputs import prepare_input
    from failtrace.errors import FailtraceError
    from failtrace_testkit.toy import toy_tokenizer

    tok = toy_tokenizer()
    assert len(prepare_input(tok, [5, 6, 7, 8], position=1).ids) == 2  # an int is a token index
    with pytest.raises(FailtraceError, match=r"position must be a whole number \(a token index\), got "):
        prepare_input(tok, [5, 6, 7, 8], position=position)  # type: ignore[arg-type]


def test_prompts_and_prefixes_of_every_kind_a_caller_passes(toy_lm: object) -> None:
    """A numpy array or a tensor of ids is the same prompt as its list; a dict, a number, ids out of the vocabulary
    in answer_prefix (blamed on the model's weights before), an lm that is no LoadedModel, topk < 1 (a RuntimeError
    from torch.topk): each one FailtraceError naming what was given."""
    import numpy as np
    import torch

    import failtrace
    from failtrace.errors import FailtraceError

    ids = [5, 6, 7, 8]
    base = failtrace.attribute(toy_lm, ids, target="#9", contrast="#10")
    for same in (np.array(ids), torch.tensor(ids), tuple(ids)):
        again = failtrace.attribute(toy_lm, same, target="#9", contrast="#10")
        assert again.token_ids == base.token_ids and again.delta_logit == base.delta_logit
    with_prefix = failtrace.attribute(toy_lm, ids[:2], target="#9", contrast="#10", answer_prefix=ids[2:])
    for prefix in (np.array(ids[2:]), torch.tensor(ids[2:]), [np.int64(t) for t in ids[2:]]):  # and their ids
        again = failtrace.attribute(toy_lm, ids[:2], target="#9", contrast="#10", answer_prefix=prefix)
        assert again.token_ids == with_prefix.token_ids and again.delta_logit == with_prefix.delta_logit
    assert failtrace.attribute(toy_lm, ids, target="#9", contrast="#10", position=np.int64(2)).token_ids == ids[:3]
    vocab = len(toy_lm.tokenizer)
    for kwargs, says in (({"prompt": {"role": "user", "content": "hi"}}, "a prompt is text, a list of chat messages"),
                         ({"prompt": 5}, "not int 5"),
                         ({"prompt": ids, "answer_prefix": [vocab]},
                          f"answer_prefix token ids out of range 0..{vocab - 1}"),
                         ({"prompt": ids, "answer_prefix": 5}, "answer_prefix is text or a list of token ids"),
                         ({"prompt": ids, "lm": toy_lm.model}, "LoadedModel (model and tokenizer), not "),
                         ({"prompt": ids, "objective": "topk_mean", "contrast": None, "topk": -3},
                          "topk (the tokens topk_mean averages) must be a whole number >= 1, got -3")):
        args = {"lm": toy_lm, "target": "#9", "contrast": "#10", **kwargs}
        with pytest.raises(FailtraceError, match=re.escape(says)):
            failtrace.attribute(args.pop("lm"), args.pop("prompt"), **args)


def test_lrp_rules_names_a_wrapper_given_for_the_module(toy_lm: object) -> None:
    """lrp_rules(lm) (the LoadedModel) was AttributeError 'no attribute named_modules'; it says to pass lm.model."""
    import failtrace
    from failtrace.errors import FailtraceError

    with pytest.raises(FailtraceError, match=r"takes the torch model \(an nn.Module\), not .*; pass lm.model"):
        with failtrace.lrp_rules(toy_lm):
            pass
    with failtrace.lrp_rules(toy_lm.model) as report:  # the module itself is patched as before
        assert report.method == "attnlrp"


@pytest.mark.parametrize("scale", [100, 300], ids=["inf", "nan"])
def test_a_forward_pass_that_overflows_is_refused_not_explained(scale: int) -> None:
    """Gemma-3-270M in float16 overflows (as in plain transformers): `attribute` printed Δℓ nan, "Σ last-layer R
    0.0000", wrote a JSON of NaNs and exited 0. Attribution and graphs now refuse it with the dtype to use, whether
    the overflow gives inf (×100) or NaN (×300: the MLP check once called that an unsupported architecture)."""
    import torch

    import failtrace
    from failtrace.errors import FailtraceError
    from failtrace_testkit.toy import one_thread, toy_loaded

    with one_thread():
        lm = toy_loaded(0, dtype="float16")
    mlp = lm.model.model.layers[0].mlp
    with torch.no_grad():  # finite weights whose products pass float16's 65504
        for proj in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            proj.weight.mul_(scale)
    assert all(bool(p.isfinite().all()) for p in lm.model.parameters())
    for explain in (failtrace.attribute, failtrace.build_graph):
        with pytest.raises(FailtraceError, match=r"not finite in float16 .*float32 or bfloat16 \(--dtype\)"):
            explain(lm, [5, 6, 7, 8], target="#9", contrast="#10")
    # collection and the pair search decoded NaN logits into token 0 again and again, silently
    from failtrace.failures.generation import greedy_generate, prefix_forward

    with pytest.raises(FailtraceError, match="not finite in float16"):
        greedy_generate(lm.model, [[5, 6, 7, 8]], 4, frozenset({2}))
    with pytest.raises(FailtraceError, match="not finite in float16"):
        prefix_forward(lm.model, [5, 6, 7, 8], 2)


def test_an_overflow_that_starts_mid_answer_is_refused() -> None:
    """Activations grow with the context: the prompt's pass can be finite and a later step not. Only the first step
    was checked, and the rest decoded NaN into token 0 (finish `length`, no error)."""
    import torch

    from failtrace.errors import FailtraceError
    from failtrace.failures.generation import greedy_generate
    from failtrace_testkit.toy import one_thread, toy_loaded

    with one_thread():
        lm = toy_loaded(0, dtype="float32")
    calls = []

    def overflow_after_the_prompt(_module: object, _args: object, out: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return out if len(calls) == 1 else torch.full_like(out, float("nan"))

    first = greedy_generate(lm.model, [[5, 6, 7, 8]], 6, frozenset({2}))[0].token_ids
    handle = lm.model.lm_head.register_forward_hook(overflow_after_the_prompt)
    try:
        with pytest.raises(FailtraceError, match="not finite in float32 on this input"):
            greedy_generate(lm.model, [[5, 6, 7, 8]], 6, frozenset({2}))
    finally:
        handle.remove()
    assert len(calls) >= 2 and len(first) > 1  # it did reach a second step (the toy's answer is not one token)
