"""The training configuration: a spec's ``train:`` section or a separate ``--config`` YAML file.

Validated like specs (pydantic, strict, unknown keys refused), so every error reads
``file:line:col: train.lr: message``. Every field can be overridden with ``--set train.FIELD=VALUE``.
Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from specc.errors import Diagnostic, Location, ParseError
from specc.lang.validate import validate
from specc.limits import DEFAULT_MAX_DATA_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from specc.load import LMap, apply_overrides, load_yaml_file

Augmentation = Literal["resized_crop", "crop", "flip", "color_jitter"]
Metric = str  # "accuracy", "perplexity", "exact_match" or "topK" (e.g. "top5"); checked below
_METRIC_RE = re.compile(r"^(accuracy|perplexity|exact_match|top[1-9][0-9]*)$")


def _tuple(value: Any) -> Any:
    """A YAML list (``[0.9, 0.999]``, as train.yaml writes it) for a tuple field; strict mode takes
    only tuples, and YAML has none."""
    return tuple(value) if isinstance(value, list) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class EarlyStopping(_Strict):
    """Stop when ``metric`` (a validation metric) has not improved for ``patience`` epochs."""

    patience: PositiveInt = 5
    metric: str = Field(
        "val_loss", description="val_loss, val_accuracy, val_perplexity, val_topK, val_exact_match"
    )
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = Field(
        True,
        description="end with the weights of the best epoch (RUN/best.safetensors), "
        "evaluated and saved as the run's weights; false: the last epoch's",
    )

    @model_validator(mode="after")
    def _metric(self) -> EarlyStopping:
        name = self.metric.removeprefix("val_")
        if not self.metric.startswith("val_") or not (name == "loss" or _METRIC_RE.match(name)):
            raise ValueError(
                f"early_stopping.metric '{self.metric}' is not a validation metric "
                "(val_loss, val_accuracy, val_perplexity, val_exact_match or val_topK)"
            )
        return self

    @property
    def higher_is_better(self) -> bool:
        return self.metric in ("val_accuracy", "val_exact_match") or self.metric.startswith("val_top")


class TrainConfig(_Strict):
    """Everything ``specc train`` needs besides the spec and the data."""

    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: PositiveFloat = 1e-3
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(False, description="sgd only; needs momentum > 0")
    betas: Annotated[tuple[float, float], BeforeValidator(_tuple)] = Field(
        (0.9, 0.999), description="adam/adamw"
    )
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "step", "cosine", "onecycle"] = "none"
    warmup_steps: NonNegativeInt = Field(0, description="linear warm-up from 0 (none/step/cosine)")
    step_size: PositiveInt = Field(
        1000, description="schedule 'step': multiply lr by gamma every step_size steps"
    )
    gamma: float = Field(0.1, gt=0, le=1)
    epochs: PositiveInt | None = 10
    max_steps: PositiveInt | None = Field(None, description="stop after this many optimizer steps")
    batch_size: PositiveInt = Field(64, description="global batch per optimizer step (all processes)")
    grad_accum: PositiveInt = Field(1, description="micro-batches per optimizer step")
    eval_batch_size: PositiveInt | None = Field(
        None,
        description="samples per evaluation batch on each process (default: batch_size on the CPU, "
        "up to 256 within the data budget on an accelerator)",
    )
    loss: Literal["auto", "cross_entropy", "mse", "lm"] = "auto"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    ignore_index: int = Field(0, description="target id the lm loss ignores (0 = pad)")
    grad_clip: PositiveFloat | None = Field(None, description="clip the global gradient norm")
    amp: Literal["none", "bf16", "fp16"] = "none"
    compile: bool = False
    channels_last: bool = False
    seed: NonNegativeInt = 0
    deterministic: bool = False
    early_stopping: EarlyStopping | None = None
    metrics: list[Metric] | None = Field(None, description="default: by task (accuracy, perplexity, ...)")
    augment: Literal["none", "crop", "crop_flip"] | list[Augmentation] = Field(
        "none",
        description="images: a list of resized_crop, crop, flip, color_jitter (applied in that order), "
        "or a preset none, crop (= [crop]), crop_flip (= [crop, flip])",
    )
    crop_padding: NonNegativeInt = Field(2, description="crop: zero padding on each side")
    resized_crop_scale: list[float] = Field(
        [0.08, 1.0], description="resized_crop: range of the crop's share of the image area"
    )
    jitter: float = Field(
        0.4, ge=0, lt=1, description="color_jitter: brightness/contrast/saturation 1 ± jitter"
    )
    num_workers: NonNegativeInt | None = Field(
        None,
        description="DataLoader worker processes; null: 0 for data held in memory, up to 4 for data "
        "decoded on demand (image files, shards, memory-mapped arrays)",
    )
    prefetch_factor: PositiveInt = Field(2, description="batches each worker loads ahead")
    pin_memory: bool | None = Field(None, description="page-locked batches; null: on CUDA")
    max_data_bytes: PositiveInt = Field(
        DEFAULT_MAX_DATA_BYTES, description="budget of any one array sized by the data (a split, a batch)"
    )
    max_image_pixels: PositiveInt = Field(
        DEFAULT_MAX_IMAGE_PIXELS, description="budget of pixels of one image file (decompression bombs)"
    )
    checkpoint_every: PositiveInt | None = Field(
        None, description="steps; checkpoints are also saved each epoch"
    )
    keep_checkpoints: PositiveInt = 3
    log_every: PositiveInt = Field(50, description="steps between plain log lines")
    sync_batchnorm: bool = Field(False, description="convert BatchNorm to SyncBatchNorm when distributed")
    fsdp: bool = Field(
        False,
        description="shard parameters, gradients and optimizer state over the processes "
        "(FSDP2 fully_shard per top-level block) instead of DDP",
    )
    seq_len: PositiveInt | None = Field(
        None, description="text/synthetic sequence length (default: the spec's)"
    )
    num_samples: PositiveInt | None = Field(None, description="synthetic sample count / cap on samples")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)

    @model_validator(mode="after")
    def _cross(self) -> TrainConfig:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps (or both: training stops at the first reached)")
        if self.fsdp and self.amp == "fp16":
            raise ValueError(
                "fsdp does not support amp 'fp16' (the grad scaler does not handle sharded "
                "gradients); use amp 'bf16'"
            )
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        for b in self.betas:
            if not 0 <= b < 1:
                raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        for m in self.metrics or []:
            if not _METRIC_RE.match(m):
                raise ValueError(
                    f"unknown metric '{m}' (accuracy, perplexity, exact_match or topK such as top5)"
                )
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        lo, hi = (self.resized_crop_scale + [0.0, 0.0])[:2]
        if len(self.resized_crop_scale) != 2 or not 0 < lo <= hi <= 1:
            raise ValueError(
                f"resized_crop_scale must be [min, max] with 0 < min <= max <= 1, got {self.resized_crop_scale}"
            )
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        return self


def train_config_from_tree(tree: Any, file: str, fallback: Location | None = None) -> TrainConfig:
    """Validate a raw ``train`` tree (an :class:`LMap` from the loader, or None for all defaults)."""
    if tree is None:
        tree = LMap(loc=fallback)
    if not isinstance(tree, dict):
        raise ParseError([Diagnostic("the training config must be a mapping of settings", fallback, "train")])
    cfg, diags = validate(TrainConfig, tree, "train", fallback or Location(file, 1, 1))
    if cfg is None:
        raise ParseError(diags)
    return cfg


def load_train_config(
    spec_raw: Any, spec_file: str, config_file: Path | None = None, sets: Sequence[str] = ()
) -> TrainConfig:
    """The training config of a run.

    Args:
        spec_raw: The spec's raw tree (``--set`` overrides already applied by the spec loader).
        spec_file: The spec's file name (for locations).
        config_file: A separate YAML file of train settings; replaces the spec's ``train:`` section.
        sets: The ``--set`` overrides; those starting with ``train.`` are applied to ``config_file``.

    Raises:
        ParseError: Every problem found, located.
    """
    if config_file is None:
        tree = spec_raw.get("train") if isinstance(spec_raw, dict) else None
        where = spec_raw.value_loc("train") if isinstance(spec_raw, LMap) and "train" in spec_raw else None
        return train_config_from_tree(tree, spec_file, where or Location(spec_file, 1, 1))
    raw = load_yaml_file(config_file)
    if isinstance(raw, LMap) and set(raw) == {"train"}:  # a file holding only a train: section
        raw = raw["train"]
    own = [s.removeprefix("train.") for s in sets if s.startswith("train.")]
    if raw is None:
        raw = LMap(loc=Location(str(config_file), 1, 1))
    if own:
        raw = apply_overrides(raw, own)
    return train_config_from_tree(raw, str(config_file), Location(str(config_file), 1, 1))
