"""Supervised fine-tuning with the model's chat template: full, LoRA or SpecLoRA.

Each example is the chat (user: prompt with the text, assistant: the label word); the loss is
on the answer tokens only. Training runs through ``transformers.Trainer`` (AdamW, schedule,
seeding, progress bar); ``full_determinism`` makes a run with the same config and seed
reproduce the same weights on the same hardware and thread count.

Recipes (``kind``):
  full      every parameter is trained;
  lora      PEFT LoRA on the target modules, alpha = 2r by default; a rank above a matrix's
            smaller dimension is capped to it (and logged), keeping alpha / r;
  speclora  SpecLoRA (arXiv 2505.23099): y = (Gamma (.) W) x + B A x with a learnable scale on
            the top_k singular directions of each frozen target matrix W (Gamma (.) W =
            W + U_k diag(d - 1) S_k V_k^T, d initialised to 1) plus a PEFT LoRA branch.
            The paper's efficient form scales the first k rows of W instead, as a positional
            stand-in for the top directions; we scale the singular directions themselves.
Every recipe's result is saved as a full checkpoint (LoRA merged into W), so the SVD cache,
edits and evaluation treat all recipes alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import datasets
import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

from spectral_edit.atomic import atomic_directory_files, write_json
from spectral_edit.data import SKEWED_LABEL_SHARE, label_shares, read_split
from spectral_edit.data.prompts import training_features
from spectral_edit.errors import ConfigError
from spectral_edit.models import load_model, load_tokenizer
from spectral_edit.plan.records import FinetuneHyper, FinetuneRecipe, Runtime
from spectral_edit.runtime import resolve as resolve_runtime

log = logging.getLogger(__name__)


class _LossToLog(TrainerCallback):
    """Writes each logged training loss to the job log; stops at a non-finite loss. (The curve
    in train_log.json comes from the Trainer's own history, which spans a resume.)"""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            if not math.isfinite(float(logs["loss"])):
                raise FloatingPointError(f"fine-tune diverged: training loss is {logs['loss']} at step {state.global_step}")
            log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, float(logs["loss"]))


class AnswerOnlyLossTrainer(Trainer):
    """The Trainer with the language-model head computed only where the loss reads it.

    The causal-LM loss reads the logits at the positions whose next token is a label (the
    answer word of a label-word task: one position per example; the response of an instruction
    chat). The model's own forward computes the head, a vocabulary-wide matrix product (SmolLM2's
    49,152 x 576, about a fifth of a step's FLOPs), and its softmax at every position. Here the
    forward gets ``logits_to_keep``: the positions any example of the batch reads, and the loss
    is transformers' own (cross-entropy summed over the answer tokens, divided by the number of
    answer tokens of the whole accumulated batch, as the Trainer passes it, else of this batch),
    so the loss curve and the weights equal the Trainer's to float rounding (bench/run.py and
    the tests compare them). Positions the loss does not read cost the decoder but not the head.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        targets = labels[:, 1:]  # the token each position predicts
        positions = (targets != -100).any(dim=0).nonzero().squeeze(-1)
        outputs = model(**inputs, logits_to_keep=positions, use_cache=False)
        logits = outputs.logits.float()
        read = targets[:, positions]
        total = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), read.reshape(-1), ignore_index=-100, reduction="sum"
        )
        # As the Trainer's default loss: the accumulated batch's count when the model takes loss
        # keyword arguments (the Trainer then does not divide by the accumulation steps again).
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        count = num_items_in_batch if scaled else (read != -100).sum()
        loss = total / torch.as_tensor(count, device=total.device, dtype=total.dtype)
        if scaled and self.args.average_tokens_across_devices:
            # num_items_in_batch then counts the answer tokens of every process, and the gradients
            # are averaged over processes: the Trainer's own loss undoes that average the same way.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss


def check_finite(tensors, what: str) -> None:
    """Raise at the first tensor with a NaN or infinite entry, naming it."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise FloatingPointError(f"{what}: tensor {name!r} has {bad} non-finite values (NaN or inf)")


class _StepTimer(TrainerCallback):
    """Wall time of each optimizer step (forward, backward, clipping, optimizer, data), for the
    log and train_log.json."""

    def __init__(self):
        self.seconds: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._started)


class _NoCheckpointAtTheEnd(TrainerCallback):
    """No resumable checkpoint at the last step: the final model is saved right after it, and
    a checkpoint there (weights and optimizer state, 1.6 GB for SmolLM2) cost 3.5 s."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False


@contextlib.contextmanager
def _deterministic_without_filling():
    """The Trainer's full_determinism turns on torch's deterministic algorithms, which also fill
    every newly allocated tensor with NaN (a check for reads of uninitialised memory that our
    kernels never make): 1.87 s against 2.03 s for a CPU step of the default, profiled by hand. Filling is off while
    training; the algorithms, and so the numbers, are the same."""
    import torch.utils.deterministic

    before = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = before


CHECKPOINT_DIR = ".checkpoints"
_COMPLETE_MARKER = "checkpoint-complete.json"


class _MarkCheckpointComplete(TrainerCallback):
    """Marks a checkpoint complete once the Trainer has written all of it.

    The Trainer writes ``checkpoint-N`` file by file; a job killed mid-save leaves a partial
    directory. Resuming only from marked checkpoints makes the save atomic in effect.
    """

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        # Rank 0 writes the weights and optimizer state, so it is the one that can say "complete".
        if state.is_world_process_zero and directory.is_dir():
            write_json(directory / _COMPLETE_MARKER, {"step": state.global_step, "fingerprint": self.fingerprint})
            log.info("checkpoint at step %d", state.global_step)


def newest_complete_checkpoint(directory: str | Path, fingerprint: str) -> Path | None:
    """The latest marked checkpoint of this exact run (same fingerprint), or None."""
    found = []
    for path in Path(directory).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        marker = path / _COMPLETE_MARKER
        if match and marker.is_file():
            try:
                if json.loads(marker.read_text()).get("fingerprint") == fingerprint:
                    found.append((int(match.group(1)), path))
            except json.JSONDecodeError:
                continue
    return max(found)[1] if found else None


def run_fingerprint(
    train_path: str | Path, dataset_spec: Mapping, hyper: Mapping, seed: int, recipe: Mapping, execution: Mapping | None = None
) -> str:
    """What a checkpoint must match to be resumed: the data, the prompt, the recipe, the seed and
    how the run executes (``execution``: torch threads, device, dtype, processes). The thread count sets
    the reduction order of matrix products, so steps resumed with another count would end in
    weights that neither an uninterrupted run with the old count nor one with the new count gives
    (log-probabilities moved by up to 0.02 on the tiny model); such a checkpoint is not resumed:
    the run starts over and ends as an uninterrupted run with this count."""
    digest = hashlib.sha256(Path(train_path).read_bytes())
    digest.update(
        json.dumps(
            [dict(dataset_spec), dict(hyper), int(seed), dict(recipe), dict(execution or {})], sort_keys=True, default=str
        ).encode()
    )
    return digest.hexdigest()[:16]


def build_training_dataset(
    tokenizer, dataset_spec: Mapping, train_path: str | Path, max_length: int
) -> tuple[datasets.Dataset, dict]:
    """The tokenized training split (see prompts.training_features) and what max_length cut."""
    features, report = training_features(tokenizer, dataset_spec, read_split(train_path), max_length)
    return datasets.Dataset.from_list(features), report


def _lora_config(model: torch.nn.Module, recipe: FinetuneRecipe):
    """PEFT LoraConfig with ranks capped at each target matrix's smaller dimension."""
    from peft import LoraConfig

    rank, alpha = recipe.rank, recipe.alpha
    targets = list(recipe.target_modules)
    smallest: dict[str, int] = {}
    for name, module in model.named_modules():
        short = name.split(".")[-1]
        if isinstance(module, torch.nn.Linear) and short in targets:
            smallest[short] = min(smallest.get(short, 10**9), min(module.weight.shape))
    missing = sorted(set(targets) - set(smallest))
    if missing:
        raise ConfigError(f"finetunes: target module {missing[0]!r} is not a linear layer of the model")
    rank_pattern, alpha_pattern, capped = {}, {}, {}
    for short, limit in sorted(smallest.items()):
        if rank > limit:
            rank_pattern[short], alpha_pattern[short] = limit, alpha * limit / rank
            capped[short] = limit
    if capped:
        log.warning(
            "LoRA rank %d exceeds the smaller dimension of %s: capped to %s (alpha / r kept)", rank, ", ".join(capped), capped
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=recipe.dropout,
        target_modules=targets,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return config, capped


class TopDirectionScale(torch.nn.Module):
    """Parametrisation W -> W + U_k diag(d - 1) S_k V_k^T with learnable d (initialised to 1)."""

    def __init__(self, weight: torch.Tensor, top_k: int):
        super().__init__()
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        k = min(top_k, s.numel())
        self.register_buffer("u", u[:, :k].to(weight.dtype).contiguous())
        self.register_buffer("sv", (s[:k, None] * vh[:k]).to(weight.dtype).contiguous())
        self.scale = torch.nn.Parameter(torch.ones(k, dtype=weight.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.u @ ((self.scale - 1)[:, None] * self.sv)


def _wrap_for_recipe(model: torch.nn.Module, recipe: FinetuneRecipe) -> tuple[torch.nn.Module, dict]:
    """The trainable model for a recipe and what the log should say about it."""
    kind = recipe.kind
    if kind == "full":
        return model, {}
    from peft import get_peft_model
    from torch.nn.utils import parametrize

    config, capped = _lora_config(model, recipe)
    peft_model = get_peft_model(model, config)
    info = {"lora_rank": recipe.rank, "lora_alpha": recipe.alpha, "capped_ranks": capped}
    if kind == "speclora":
        scaled = 0
        for name, module in peft_model.named_modules():
            base_layer = getattr(module, "base_layer", None)
            if isinstance(base_layer, torch.nn.Linear) and name.split(".")[-1] in recipe.target_modules:
                parametrize.register_parametrization(base_layer, "weight", TopDirectionScale(base_layer.weight, recipe.top_k))
                scaled += 1
        info.update(speclora_top_k=recipe.top_k, speclora_matrices=scaled)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    info["trainable_parameters"] = trainable
    log.info("%s: %d trainable parameters", kind, trainable)
    return peft_model, info


def _merge_recipe(model: torch.nn.Module, recipe: FinetuneRecipe) -> torch.nn.Module:
    """A plain model whose weights include the recipe's update (LoRA merged, scales applied)."""
    kind = recipe.kind
    if kind == "full":
        return model
    from torch.nn.utils import parametrize

    if kind == "speclora":
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model.merge_and_unload()


@contextlib.contextmanager
def _fsdp_in_any_process_group(enabled: bool) -> Iterator[None]:
    """Let accelerate take its FSDP plugin in CPU processes (gloo) and in a group of one process
    while the Trainer builds its Accelerator. PyTorch's FSDP2 (fully_shard) runs in both, but
    accelerate turns the plugin on only for a multi-accelerator process group (its
    AcceleratorState checks the distributed type against a list of multi-GPU kinds) and
    otherwise trains data-parallel or unsharded. Presenting the group as multi-GPU for that check
    alone runs the same sharded path everywhere (the wrap, the gathered save, the sharded
    checkpoint): on CPU processes, so the tests exercise it, and on one GPU (bench/gpu_check.sh).
    accelerate then records FSDP as the type; if it did not, the group's own type is put back.
    """
    import accelerate.state
    from accelerate.utils import DistributedType

    shared = accelerate.state.PartialState._shared_state
    own = shared.get("distributed_type")
    if not enabled or own not in (DistributedType.MULTI_CPU, DistributedType.NO):
        yield
        return
    shared["distributed_type"] = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        if shared.get("distributed_type") == DistributedType.MULTI_GPU:  # accelerate did not take FSDP
            shared["distributed_type"] = own


def _fsdp_units(model: torch.nn.Module) -> dict[str, int]:
    """Modules sharded by FSDP (FSDP2's FSDPModule or FSDP1's wrapper) by class (FSDP2 names
    the class it swaps in FSDP<Class>); empty for a plain model."""
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # torch built without distributed support
        return {}
    units = [module for module in model.modules() if isinstance(module, (FSDPModule, FullyShardedDataParallel))]
    return dict(Counter(type(module).__name__.removeprefix("FSDP") for module in units))


def _unwrapped_with_state(base_dir, recipe: FinetuneRecipe, state: Mapping) -> torch.nn.Module:
    """A fresh (recipe-wrapped) model holding ``state``, the gathered weights of an FSDP run."""
    model = load_model(base_dir)
    trainable, _ = _wrap_for_recipe(model, recipe)
    missing, unexpected = trainable.load_state_dict(dict(state))
    # Tied weights (lm_head = embed_tokens) may be gathered once; anything else is an error.
    missing = [name for name in missing if not name.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"FSDP state dict does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return trainable


def _resume_point(out_dir: str | Path, fingerprint: str, checkpoint_every: int, rank: int) -> tuple[Path, Path | None]:
    """The run's checkpoint directory and the checkpoint to resume from (None: start afresh,
    after removing another run's or only partial checkpoints)."""
    checkpoints = Path(out_dir) / CHECKPOINT_DIR
    resume_from = newest_complete_checkpoint(checkpoints, fingerprint) if checkpoint_every > 0 else None
    if checkpoint_every > 0 and resume_from is None and checkpoints.exists() and rank == 0:
        shutil.rmtree(checkpoints, ignore_errors=True)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    return checkpoints, resume_from


def training_arguments(
    hyper: FinetuneHyper,
    *,
    output_dir: str,
    seed: int,
    checkpoint_every: int,
    device: torch.device,
    dtype: torch.dtype,
    world_size: int,
    rank: int,
    gradient_checkpointing: bool,
    progress: bool,
    sharded: bool | None = None,
) -> TrainingArguments:
    """The Trainer's arguments of a run: the hyperparameters, checkpointing, determinism, mixed
    precision and, under torchrun, FSDP (over GPUs, or CPU processes with gloo)."""
    use_cuda = device.type == "cuda"
    sharded = world_size > 1 if sharded is None else sharded
    # min_lr_ratio has no schema default (see FinetuneHyper): left out, the rate ends at 0.
    min_lr_rate = 0.0 if hyper.min_lr_ratio is None else hyper.min_lr_ratio
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=hyper.steps,
        per_device_train_batch_size=hyper.batch_size // world_size,
        gradient_accumulation_steps=hyper.gradient_accumulation_steps,
        learning_rate=hyper.learning_rate,
        lr_scheduler_type=hyper.lr_scheduler,
        lr_scheduler_kwargs={"min_lr_rate": min_lr_rate} if hyper.lr_scheduler == "cosine_with_min_lr" else {},
        warmup_steps=hyper.warmup_steps,
        weight_decay=hyper.weight_decay,
        adam_beta1=hyper.adam_beta1,
        adam_beta2=hyper.adam_beta2,
        max_grad_norm=hyper.max_grad_norm,
        # Fused AdamW updates the weights in place: on the CPU a step is about 20 % faster
        # than the foreach version, which allocates temporaries the size of the model
        # (bench/run.py measures it). FSDP's sharded parameters keep the foreach version.
        optim="adamw_torch" if sharded else "adamw_torch_fused",
        logging_steps=1,
        logging_nan_inf_filter=False,  # a non-finite loss must reach _LossToLog, which stops the run
        save_strategy="steps" if checkpoint_every > 0 else "no",
        save_steps=max(checkpoint_every, 1),
        save_total_limit=2,
        save_only_model=False,
        report_to="none",
        seed=int(seed),
        data_seed=int(seed),
        full_determinism=True,
        use_cpu=not use_cuda,
        # Mixed precision: fp32 master weights, bf16/fp16 compute (autocast). bf16 runs on the
        # CPU too (runtime {device: cpu, dtype: bfloat16}: how the tests exercise the GPU's
        # default path); fp16 needs a gradient scaler and stays a GPU-only choice.
        bf16=dtype == torch.bfloat16,
        fp16=use_cuda and dtype == torch.float16,
        dataloader_num_workers=0,
        disable_tqdm=not progress or rank != 0,
        # Several processes: FSDP2 through accelerate, one unit per decoder layer (the model's
        # _no_split_modules), with FSDP's own activation checkpointing; on GPUs with NCCL, on
        # CPU processes (the tests) with gloo (see _fsdp_in_any_process_group).
        activation_checkpointing=bool(gradient_checkpointing) and not sharded,
        fsdp=True if sharded else None,
        fsdp_config={
            "version": 2,
            "reshard_after_forward": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "activation_checkpointing": bool(gradient_checkpointing),
            "state_dict_type": "FULL_STATE_DICT",
        }
        if sharded
        else None,
        ddp_backend=("nccl" if use_cuda else "gloo") if sharded else None,
    )


def loss_curve(log_history: list[dict]) -> list[dict]:
    """Step, loss and learning rate of every logged step. The Trainer's history includes the
    steps before a resume (restored from the checkpoint), so the curve spans it."""
    return [
        {
            "step": int(e["step"]),
            "loss": float(e["loss"]),
            **({"learning_rate": float(e["learning_rate"])} if "learning_rate" in e else {}),
        }
        for e in log_history
        if "loss" in e
    ]


def _log_label_shares(dataset_spec: Mapping, train_path) -> dict | None:
    """The training split's label shares (label-word datasets), logged; a skewed split is named
    with what to change, since a fine-tune on it may learn only the label prior."""
    if "label_words" not in dataset_spec:
        return None
    shares = label_shares(read_split(train_path)["label"], dataset_spec["label_words"])
    log.info("training labels: %s", ", ".join(f"{word} {100 * share:.0f} %" for word, share in shares.items()))
    word, top = max(shares.items(), key=lambda item: item[1])
    if top > SKEWED_LABEL_SHARE:
        log.warning(
            "%.0f %% of the training examples are labelled %r: the fine-tune may learn to answer %r whatever the "
            "text (the label prior); set balance_labels: true on the dataset or train longer",
            100 * top,
            word,
            word,
        )
    return shares


def finetune(
    base_dir: str | Path,
    train_path: str | Path,
    out_dir: str | Path,
    dataset_spec: Mapping,
    hyper: Mapping,
    seed: int,
    progress: bool = True,
    recipe: Mapping | None = None,
    runtime: Runtime | Mapping | None = None,
    checkpoint_every: int = 0,
    gradient_checkpointing: bool | None = None,
    answer_only_head: bool = True,
    fsdp: bool | None = None,
) -> dict:
    """Fine-tune the base model in ``base_dir`` and save it (with train_log.json) to ``out_dir``.

    ``recipe`` is a resolved fine-tuning recipe (kind and its keys, plan.config.resolve_finetune)
    and ``hyper`` its hyperparameters, both as validated (every schema default filled in); None
    means full SFT. Plain mappings, as the job's params and torchrun's JSON arguments carry them
    (and as the checkpoints' fingerprint and train_log.json record them); read through a
    FinetuneRecipe.
    ``checkpoint_every`` > 0 saves a resumable checkpoint (weights, optimizer, scheduler, RNG
    states) under ``out_dir/.checkpoints`` every that many steps; a rerun of the same run
    resumes from the newest complete one and ends with the same weights as an uninterrupted
    run. The checkpoints are deleted once the final model is saved.

    Under ``torchrun`` (``spectral_edit.train.distributed``, which sets ``fsdp``; None means
    WORLD_SIZE > 1) the model is sharded over the processes with FSDP2 (full shard, one unit per
    decoder layer; GPUs with NCCL, CPU processes with gloo, also a group of one) and every process takes
    batch_size / world_size examples of each step, so the global batch and the loss curve are
    those of one process; only rank 0 writes the output. ``gradient_checkpointing`` defaults
    to on when sharded. ``answer_only_head`` computes the language-model head only where the
    loss reads it (:class:`AnswerOnlyLossTrainer`); False runs the Trainer's own loss (the
    same numbers, slower: the bench and the tests compare them).
    """
    recipe = dict(recipe or {"kind": "full"})
    spec = FinetuneRecipe.from_mapping({**recipe, "hyper": hyper})
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    sharded = world_size > 1 if fsdp is None else bool(fsdp)
    batch_size = spec.hyper.batch_size
    if sharded and batch_size % world_size:
        raise ConfigError(f"config: finetune.batch_size {batch_size} is not divisible by the {world_size} processes")
    if gradient_checkpointing is None:
        gradient_checkpointing = sharded
    tokenizer = load_tokenizer(base_dir)
    train_set, truncation = build_training_dataset(tokenizer, dataset_spec, train_path, spec.hyper.max_length)
    if batch_size > len(train_set):
        # The Trainer would silently take the whole split as each batch.
        raise ConfigError(f"config: finetune.batch_size: {batch_size} is larger than the {len(train_set)} training examples")
    label_share = _log_label_shares(dataset_spec, train_path)
    device, dtype = resolve_runtime(runtime)
    losses = _LossToLog()
    started = time.time()
    checkpoint_every = int(checkpoint_every or 0)
    execution = {
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),  # a bf16 run never resumes an fp32 one's checkpoint
        "processes": world_size,
    }
    fingerprint = run_fingerprint(train_path, dataset_spec, hyper, seed, recipe, execution)
    checkpoints, resume_from = _resume_point(out_dir, fingerprint, checkpoint_every, rank)
    with tempfile.TemporaryDirectory(prefix="trainer-") as scratch:
        args = training_arguments(
            spec.hyper,
            output_dir=str(checkpoints) if checkpoint_every > 0 else scratch,
            seed=seed,
            checkpoint_every=checkpoint_every,
            device=device,
            dtype=dtype,
            world_size=world_size,
            rank=rank,
            gradient_checkpointing=bool(gradient_checkpointing),
            progress=progress,
            sharded=sharded,
        )
        # The model is built after TrainingArguments: full_determinism re-seeds at creation,
        # so LoRA's random initialisation depends on the seed alone.
        model = load_model(base_dir)
        model.train()
        trainable, recipe_info = _wrap_for_recipe(model, spec)
        with _fsdp_in_any_process_group(sharded):
            trainer = (AnswerOnlyLossTrainer if answer_only_head else Trainer)(
                model=trainable,
                args=args,
                train_dataset=train_set,
                data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
                callbacks=[losses, _MarkCheckpointComplete(fingerprint), _NoCheckpointAtTheEnd(), timer := _StepTimer()],
            )
        with _deterministic_without_filling():
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        curve = loss_curve(trainer.state.log_history)
        fsdp_units = _fsdp_units(trainer.model_wrapped)
        if sharded:
            log.info("trained in %d processes (%s), FSDP units %s", world_size, type(trainer.model_wrapped).__name__, fsdp_units)
            # The full (unsharded) weights, gathered on rank 0; the other ranks are done.
            full_state = trainer.accelerator.get_state_dict(trainer.model)
            if rank != 0:
                return {}
            trainable = _unwrapped_with_state(base_dir, spec, full_state)
    model = _merge_recipe(trainable, spec)
    model.eval()
    check_finite(model.state_dict().items(), "fine-tuned model")
    train_log = {
        "seed": int(seed),
        "recipe": recipe,
        "hyperparameters": dict(hyper),
        **recipe_info,
        "train_examples": len(train_set),
        "train_label_shares": label_share,
        # Instruction data: answers cut by max_length (examples truncated, left out, tokens cut).
        "max_length_cuts": truncation,
        "epochs": float(result.metrics.get("epoch", 0.0)),
        "final_loss": curve[-1]["loss"] if curve else None,
        "mean_train_loss": float(result.training_loss),
        "seconds": time.time() - started,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        # Autocast over fp32 master weights (the saved model is fp32 either way).
        "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else None,
        "torch_threads": torch.get_num_threads(),
        "processes": world_size,
        "parallelism": type(trainer.model_wrapped).__name__ if sharded else None,
        "fsdp_units": sum(fsdp_units.values()),
        "fsdp_unit_classes": fsdp_units,
        "gradient_checkpointing": bool(gradient_checkpointing),
        "loss_curve": curve,
        # Steps of this process (a resumed run: since the resume); the first allocates the optimizer state.
        "step_seconds": [round(t, 4) for t in timer.seconds],
        "resumed_from_step": int(resume_from.name.split("-")[1]) if resume_from else None,
    }
    with atomic_directory_files(out_dir, last=("model.safetensors",)) as scratch_out:
        model.save_pretrained(scratch_out)
        tokenizer.save_pretrained(scratch_out)
        write_json(Path(scratch_out) / "train_log.json", train_log)
    shutil.rmtree(checkpoints, ignore_errors=True)
    log.info("fine-tuned (%s) in %.0f s, final loss %s", spec.kind, train_log["seconds"], train_log["final_loss"])
    return train_log
