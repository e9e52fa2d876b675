"""``failtrace finetune``: post-train the explained model on its clean cases with trl, saving real checkpoints.

Methods (all through trl's trainers, on the examples of :mod:`failtrace.training.data`, trained cases only):

* ``sft``: trl's SFTTrainer on prompt → recovered completion (completion-only loss: mean NLL of the completion
  tokens);
* ``dpo``: trl's DPOTrainer (sigmoid loss, β) on chosen = recovered completion, rejected = the failed completion,
  against a frozen copy of the base model;
* ``token-dpo``: the same with every token's log-ratio weighted (:mod:`failtrace.training.weighted_dpo`): the
  decision token 1, later tokens ``tail_weight``; the shared answer prefix's attribution weights cancel in the loss.

The policy and the reference are copies of the model failtrace's loader returned (the converted weights the cases
were computed with); the caller's model is never changed. A constant learning rate, no warm-up, fp32, no dropout,
no gradient checkpointing: the few dozen steps a CPU allows are all spent at the given rate. Checkpoints:
``step-0`` (untrained) before the first step, every ``save_every`` steps, and the last step
(:mod:`failtrace.training.checkpoints`).

Resuming: at every saved step the trainer's own checkpoint (weights, optimiser, scheduler, RNG and trainer state;
transformers' format, only the newest kept) goes to ``OUT/.resume/`` with the run's identity (settings, base model,
split, library versions). A rerun with the same identity continues from it, and its later checkpoints equal those
of an uninterrupted run (tested); another identity starts again from step 0. A finished run removes ``.resume``.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from failtrace.errors import FailtraceError
from failtrace.store.store import ResultsStore
from failtrace.training.data import Example, load_examples, split_cases

METHODS = ("sft", "dpo", "token-dpo")
DEFAULT_BETA = 0.1  # DPO's β (trl's default)
MAX_BETA = 1000.0  # beyond, the sigmoid loss saturates and its gradient overflows (1e20: weights never move)


@dataclass
class FinetuneSettings:
    """What a finetune run does (all of it is recorded in every checkpoint's metadata)."""

    method: str
    steps: int = 200
    save_every: int = 50
    held_out: float = 0.3
    seed: int = 0
    lr: float = 1e-5
    beta: float = DEFAULT_BETA
    tail_weight: float = 0.0
    batch_size: int = 1
    benchmark: str | None = None
    resume_state: bool = True  # keep the trainer's state in OUT/.resume (about 3x the weights) so a rerun resumes

    def check(self) -> None:
        """Refuse settings that cannot train (one clear line naming the option), before any model loads."""
        if self.method not in METHODS:
            raise FailtraceError(f"unknown --method {self.method!r}; use one of: {', '.join(METHODS)}")
        for name in ("steps", "save_every", "batch_size"):
            if getattr(self, name) < 1:
                raise FailtraceError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.held_out < 1.0:
            raise FailtraceError(f"--held-out must be in [0, 1), got {self.held_out}")
        if not 0 < self.lr <= 1:
            raise FailtraceError(f"--lr must be in (0, 1], got {self.lr}")
        if not 0 < self.beta <= MAX_BETA:  # NaN fails too
            raise FailtraceError(f"--beta must be in (0, {MAX_BETA:g}], got {self.beta:g} (DPO uses 0.01-1; at 1e20 "
                                 "its gradient overflows and no weight changes, yet every step logs a loss)")
        if self.beta != DEFAULT_BETA and self.method == "sft":  # recorded, it would make an equal run look different
            raise FailtraceError("--beta applies to --method dpo and token-dpo only, not sft")
        if not 0.0 <= self.tail_weight <= 1.0:
            raise FailtraceError(f"--tail-weight must be in [0, 1], got {self.tail_weight}")
        if self.tail_weight and self.method != "token-dpo":  # sft and dpo weigh no tokens: it would do nothing
            raise FailtraceError(f"--tail-weight applies to --method token-dpo only, not {self.method}")
        if not 0 <= self.seed <= 2**31 - 1:  # torch/numpy seeds; checked before step-0 is written
            raise FailtraceError(f"--seed must be in [0, 2147483647], got {self.seed}")


def _scratch(stack: contextlib.ExitStack) -> str:
    """The trainer's own checkpoints for a run without ``--resume-state``: an owned temp folder (a killed run's,
    optimiser state included, is swept by the next: :mod:`failtrace.tempdirs`), removed when the run ends."""
    from failtrace.tempdirs import owned_tempdir, remove_tree

    folder = owned_tempdir(None, "failtrace-finetune-")
    stack.callback(remove_tree, folder)
    return str(folder)


@dataclass
class TrainingData:
    """What a run reads from the store, read at once: the store is not needed (nor held open) while it trains."""

    examples: list[Example]
    rejected: int  # cases left out: a reviewer rejected their pair
    store: str  # the store's absolute path, recorded in every checkpoint


def training_data(store: ResultsStore, lm: Any, settings: FinetuneSettings, model_fingerprint: str | None = None
                  ) -> TrainingData:
    """The examples of ``lm``'s clean cases in ``store`` for ``settings`` (:func:`~failtrace.training.data.
    load_examples`)."""
    from failtrace.failures.generation import eos_token_ids
    from failtrace.models.fingerprint import model_fingerprint as fingerprint

    examples, rejected = load_examples(store, lm.tokenizer, eos_token_ids(lm.model, lm.tokenizer),
                                       model_fingerprint or fingerprint(lm), settings.benchmark,
                                       settings.tail_weight, model_name=lm.name)
    return TrainingData(examples, rejected, str(Path(store.path).absolute()))


@dataclass
class FinetuneResult:
    """What a run wrote."""

    out: Path
    checkpoints: list[Path]
    trained: list[str]
    held_out: list[str]
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None  # the step an interrupted run with the same identity was continued from
    replaced: list[str] = field(default_factory=list)  # another run's leftover step folders this run removed
    rejected: int = 0  # cases left out: a reviewer rejected their pair (cases.preferences.training_cases)
    # the newest step an interrupted run of these settings saved without a whole trainer state (interrupted while
    # saving it): this run trained again from step 0 (deterministic: the same weights)
    restarted_over: int | None = None


def require_trl() -> None:
    """trl is an optional dependency (``pip install 'failtrace[train]'``): one clear error when it is missing."""
    try:
        import trl  # noqa: F401
    except ImportError:
        raise FailtraceError("failtrace finetune needs trl; install it with: pip install 'failtrace[train]' "
                             "(or pip install 'trl>=1.16,<2')") from None


def _versions() -> dict[str, str]:
    import torch
    import transformers
    import trl

    import failtrace

    return {"failtrace": getattr(failtrace, "__version__", "?"), "trl": trl.__version__,
            "transformers": transformers.__version__, "torch": torch.__version__}


def _trainable_copy(model: Any) -> Any:
    policy = copy.deepcopy(model)
    for p in policy.parameters():
        p.requires_grad_(True)
    policy.train()
    return policy


def _frozen_copy(model: Any) -> Any:
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _common_args(s: FinetuneSettings, work: str, progress: bool) -> dict[str, Any]:
    """Trainer arguments shared by every method (module docstring)."""
    return dict(output_dir=work, max_steps=s.steps, per_device_train_batch_size=s.batch_size, learning_rate=s.lr,
                lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, report_to=[],
                save_strategy="steps" if s.resume_state else "no", save_steps=s.save_every, save_total_limit=1,
                save_only_model=False,
                use_cpu=True, seed=s.seed, data_seed=s.seed, bf16=False, fp16=False, gradient_checkpointing=False,
                max_length=None, disable_tqdm=not progress, dataloader_num_workers=0)


def _trainer(s: FinetuneSettings, lm: Any, train: list[Example], work: str, progress: bool,
             callback: Any) -> Any:
    """The trl trainer of ``s.method`` on the trained examples."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    if not progress:  # trl maps the dataset (e.g. "Building labels"): no bars for that either
        disable_progress_bar()

    common = _common_args(s, work, progress)
    tokenizer = copy.deepcopy(lm.tokenizer)  # trl sets a pad token on it: never on the caller's
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if s.method == "sft":
        from trl import SFTConfig, SFTTrainer

        rows = [{"input_ids": e.prompt_ids + e.chosen_ids,
                 "completion_mask": [0] * len(e.prompt_ids) + [1] * len(e.chosen_ids)} for e in train]
        return SFTTrainer(model=_trainable_copy(lm.model), processing_class=tokenizer,
                          args=SFTConfig(**common, completion_only_loss=True),
                          train_dataset=Dataset.from_list(rows), callbacks=[callback])
    from trl import DPOConfig

    from failtrace.training.weighted_dpo import (
        PretokenizedDPOTrainer,
        TokenWeightedDPOTrainer,
        WeightedPreferenceCollator,
    )

    rows = [{"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids,
             "chosen_weights": e.chosen_weights, "rejected_weights": e.rejected_weights} for e in train]
    config = DPOConfig(**common, beta=s.beta, loss_type="sigmoid", precompute_ref_log_probs=False)
    kwargs: dict[str, Any] = dict(model=_trainable_copy(lm.model), ref_model=_frozen_copy(lm.model), args=config,
                                  processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                                  callbacks=[callback])
    if s.method == "dpo":
        return PretokenizedDPOTrainer(**kwargs)
    return TokenWeightedDPOTrainer(**kwargs, data_collator=WeightedPreferenceCollator(pad_token_id=pad_id))


def _quiet_logs(trainer: Any, progress: bool) -> None:
    """No log dict per step on the terminal (the command prints the losses once, at the end): transformers prints
    each one without its progress bar (PrinterCallback) and under it (ProgressCallback.on_log)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if progress:
        class BarOnly(ProgressCallback):  # type: ignore[misc]
            def on_log(self, *args: Any, **kwargs: Any) -> None:
                return None

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(BarOnly())


def _take_last_step(trainer: Any, checkpoint: Path) -> None:
    """The run was killed after its last step, while failtrace saved that step's folder: the trainer's checkpoint
    of the last step becomes the trainer's weights and state, with no training. (``train(resume_from_checkpoint=)``
    trains one step past ``max_steps`` when the last step ends inside an epoch: transformers 5.25.) The weights are
    loaded by the trainer's own loader, the one ``train()`` uses, for every weight format it saves."""
    from transformers import TrainerState

    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))


def finetune(data: TrainingData | ResultsStore, lm: Any, out: str | Path, settings: FinetuneSettings,
             progress: bool = False, on_note: Callable[[str], None] | None = None) -> FinetuneResult:
    """Train ``lm`` (a :class:`~failtrace.models.LoadedModel`) by ``settings.method`` on ``data`` (or a store's:
    :func:`training_data`); write checkpoints to ``out`` (resuming an interrupted run of the same identity: module
    docstring). ``on_note`` hears, before training, where an earlier run's checkpoints were set aside, and a batch
    size larger than the trained cases."""
    from failtrace.models.fingerprint import model_fingerprint
    from failtrace.models.loading import _quiet_transformers
    from failtrace.training.checkpoints import (RUN_KEYS, drop_set_aside, make_save_callback, numbered,
                                               save_checkpoint, set_aside, step_folder, vocab_digest)
    from failtrace.training.resume import (RESUME_DIR, check_resume_dir, finish_resume, resume_point, start_resume,
                                           unresumable_step)

    settings.check()
    require_trl()
    t0 = time.perf_counter()
    base_fp = model_fingerprint(lm)
    if not isinstance(data, TrainingData):
        data = training_data(data, lm, settings, base_fp)
    examples, rejected = data.examples, data.rejected
    trained, held = split_cases([e.case_id for e in examples], settings.held_out, settings.seed,
                                items=[f"{e.benchmark}\x1f{e.item_id}" for e in examples])
    by_id = {e.case_id: e for e in examples}
    if on_note is not None and 0 < len(trained) < settings.batch_size:  # the trainer's batches are never padded out
        on_note(f"batch size {settings.batch_size} is more than the {len(trained)} trained cases: every step "
                f"trains on those {len(trained)}")
    meta = {"method": settings.method, "settings": asdict(settings), "base_model": lm.name,
            "base_model_source": lm.source, "base_model_fingerprint": base_fp,
            "base_vocab_digest": vocab_digest(lm.tokenizer), "store": data.store,
            "trained_case_ids": trained, "held_out_case_ids": held,
            "trained_item_ids": [by_id[c].item_id for c in trained],
            "held_out_item_ids": [by_id[c].item_id for c in held], "versions": _versions(),
            # the pairs (pair run, item) behind the cases: a case analysed again later keeps its pair's split
            "trained_pairs": [[by_id[c].pair_run_id, by_id[c].item_id] for c in trained],
            "held_out_pairs": [[by_id[c].pair_run_id, by_id[c].item_id] for c in held],
            "example_notes": {e.case_id: e.notes for e in examples if e.notes},
            "rejected_in_review": rejected}
    out = Path(out)
    # trl trains with the cache off; a config without the attribute generates with it (transformers' default)
    base_cache = getattr(getattr(lm.model, "config", None), "use_cache", True)
    identity = {k: meta[k] for k in (*RUN_KEYS, "versions")}  # a resume continues only this run, on these versions
    check_resume_dir(out)
    state, resumed = resume_point(out, identity)
    restarted = unresumable_step(out, identity) if resumed is None else None
    if resumed is None:  # this run starts at step 0; another run's resume state is replaced (or dropped)
        aside, moved = set_aside(out)  # whole, until this run finishes: a stopped run never leaves a mix of two
        if aside is not None and on_note is not None:
            on_note(f"{out} held {', '.join(moved)} of an earlier finetune run: moved to {aside} until this run "
                    f"finishes, then removed (copy them elsewhere to keep them)")
        saved = [save_checkpoint(lm.model, lm.tokenizer, out, 0, meta | {"loss_history": []})]
        if settings.resume_state:
            start_resume(out, identity)
        else:
            finish_resume(out)
    else:
        saved = [step_folder(out, k) for k in range(0, resumed + 1, settings.save_every)]
    with contextlib.ExitStack() as stack:
        work = str(out / RESUME_DIR) if settings.resume_state else _scratch(stack)
        callback = make_save_callback(lm.tokenizer, out, settings.save_every, meta, saved, base_cache)
        with warnings.catch_warnings():  # trl's configs turn gradient checkpointing on by default; failtrace turns it
            # off by the name trl sets, which transformers 5 calls deprecated: a FutureWarning on every run otherwise
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
            trainer = _trainer(settings, lm, [by_id[c] for c in trained], work, progress, callback)
        _quiet_logs(trainer, progress)
        if state is not None and resumed == settings.steps:
            _take_last_step(trainer, state)
        else:
            with _quiet_transformers():  # no "Writing model shards" bar per resume save; trl's own bar stays
                trainer.train(resume_from_checkpoint=str(state) if state is not None else None)
        losses = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
        if settings.steps % settings.save_every:
            saved.append(save_checkpoint(trainer.model, lm.tokenizer, out, trainer.state.global_step,
                                         meta | {"loss_history": losses}, base_cache))
    finish_resume(out)
    # A new run replaces another run's checkpoints whole, once it has finished: set aside when it started (above, or
    # by the stopped start this run resumed), and any step folder not its own (compare --checkpoints OUT/step-*
    # must never mix two runs).
    ours = {Path(p).name for p in saved}  # every step folder this run wrote or resumed from; check_replaceable
    stray = sorted(f.name for f in out.glob("step-*") if numbered(f.name, "step-") is not None and f.name not in ours)
    for name in stray:  # vouched that each other step-N is a failtrace checkpoint, so another run's
        shutil.rmtree(out / name)
    replaced = sorted(set(stray) | set(drop_set_aside(out)), key=lambda n: numbered(n, "step-") or 0)
    return FinetuneResult(out=out, checkpoints=saved, trained=trained, held_out=held, losses=losses,
                          seconds=time.perf_counter() - t0, resumed_from=resumed, replaced=replaced,
                          rejected=rejected, restarted_over=restarted)
