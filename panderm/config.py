"""Structured configs (dataclasses in Hydra's ConfigStore): the schema every YAML under `configs/` must fit.

Each primary config names its schema first in its defaults list, so a misspelt key or a wrongly typed value
is an error before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from panderm.data.dataset import BadImagePolicy
from panderm.errors import ConfigError


class DataSource(StrEnum):
    """Where a data config's images come from."""

    synthderm = "synthderm"
    synthcxr = "synthcxr"
    manifest = "manifest"
    medmnist = "medmnist"
    isic = "isic"
    ph2 = "ph2"
    image_folder = "image_folder"
    dicom = "dicom"
    nifti = "nifti"
    shards = "shards"
    # public datasets in their published layouts (panderm.data.readers.public)
    ham10000 = "ham10000"
    isic2019 = "isic2019"
    isic2020 = "isic2020"
    bcn20000 = "bcn20000"
    pad_ufes20 = "pad_ufes20"
    derm7pt = "derm7pt"
    ddi = "ddi"
    fitzpatrick17k = "fitzpatrick17k"
    chestxray14 = "chestxray14"
    chexpert = "chexpert"
    rsna_pneumonia = "rsna_pneumonia"


@dataclass
class DataConfig:
    """One data set: a generator, a manifest file, or a reader for a real format.

    `path` is the manifest file (manifest), the .npz (medmnist), the folder (isic, ph2, image_folder,
    dicom, nifti) or the folder `panderm shard` wrote (shards: `<path>/<split>/` with shards and index.json,
    streamed by `panderm pretrain` only); `out_dir` is where generated or exported images go (default:
    `<run folder>/data/<name>`). `encoding` is the text encoding of a CSV manifest (default UTF-8; e.g.
    `data.encoding=latin-1`). `mask_threshold` (0-255) binarises masks that are not binary on purpose
    (foreground = value > threshold, e.g. JPEG masks); by default a mask must be binary. A public dataset's
    `path` is its folder as published; `options` are its reader's keyword options (e.g. CheXpert's
    `data.options.uncertain=ones`), and a split it makes is saved under `out_dir`. For the generators they
    are the generator's other parameters (SynthDerm's `followup_fraction`) and for PH2 `fractions`
    (train, val, test: PH2 has no official split).
    """

    source: DataSource = DataSource.synthderm
    name: str = "synthderm"
    path: str | None = None
    root: str | None = None
    out_dir: str | None = None
    classes: list[str] | None = None
    modality: str | None = None
    n_patients: int = 120
    image_size: int = 64
    seed: int = 0
    on_bad_image: BadImagePolicy = BadImagePolicy.error
    check_files: bool = True
    deep_check: bool = False
    allow_outside_root: bool = False
    encoding: str | None = None
    mask_threshold: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OverviewConfig:
    """The data-overview stage of reports."""

    n_samples: int = 16
    columns: list[str] = field(default_factory=lambda: ["label", "modality", "fitzpatrick"])


@dataclass
class EncoderConfig:
    """The student encoder (fields of `panderm.models.encoder.EncoderSpec`) and how to initialise it."""

    arch: str = "vit_tiny"
    patch_size: int = 8
    image_size: int = 64
    depth: int | None = None
    init_values: float | None = None
    pos_embed: str = "learn"
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    weights: str | None = None


@dataclass
class TeacherConfig:
    """A frozen open_clip vision tower for `mlm_clip` (`kind: none` for methods that need no teacher)."""

    kind: str = "none"
    model_name: str = "ViT-B-16"
    weights: str | None = None
    image_size: int | None = None


@dataclass
class ObjectiveConfig:
    """The pretraining method, its masking and its method-specific arguments (`options`)."""

    name: str = "simclr"
    mask_kind: str = "block"
    mask_ratio: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW with warmup-cosine per step; layer-wise lr decay when `layer_decay` is set.

    The learning rate scales with the global batch (`base_lr` per 256 images, summed over devices and
    nodes) unless `lr` gives it outright; warm-up lasts `warmup_fraction` of the run unless `warmup_steps`
    gives it in steps. The defaults are the default objective's recipe (configs/objective/*.yaml hold the
    others')."""

    lr: float | None = None
    base_lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float | None = None
    warmup_steps: int | None = None
    warmup_fraction: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = 3.0
    probe_lr: float = 1e-2


@dataclass
class MonitorConfig:
    """SSL monitors on the validation images every `every_n_steps` (0: off): leave-one-out kNN balanced
    accuracy (k neighbours), RankMe and feature std of up to `max_images` images."""

    every_n_steps: int = 50
    max_images: int = 2000
    k: int = 20


@dataclass
class TrainerConfig:
    """Lightning Trainer settings (presets in configs/trainer: cpu, gpu, ddp, fsdp)."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    # Only with strategy=fsdp (panderm.pretrain.strategy): how FSDP shards (FULL_SHARD, SHARD_GRAD_OP,
    # NO_SHARD, HYBRID_SHARD), and whether each transformer block's activations are recomputed in the backward
    # pass instead of stored (use this or encoder.grad_checkpointing, not both).
    sharding_strategy: str = "FULL_SHARD"
    activation_checkpointing: bool = False
    precision: str = "32-true"
    max_epochs: int = 8
    max_steps: int = -1
    compile: bool = False
    deterministic: bool = False
    log_every_n_steps: int = 5
    checkpoint_every_n_steps: int = 50
    progress_bar: bool = True


@dataclass
class PretrainConfig:
    """`panderm pretrain`: self-supervised pretraining of an encoder (see configs/pretrain.yaml)."""

    seed: int = 0
    image_size: int = 64
    batch_size: int = 64
    num_workers: int = 2
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    online_probe: bool = True
    balance_modalities: bool = True
    on_nonfinite: str = "raise"
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


@dataclass
class DemoPretrainConfig:
    """The demo's pretraining stage: `panderm pretrain` defaults on the demo data with this budget, on a
    ViT-tiny/8 of `depth` blocks (6: half the cost of every stage, and at this budget it learned more than
    12 blocks), with `objective_options` merged into the objective's (simclr views of 32 px: a quarter of
    the compute per image; 14 epochs of them learned more than 10 epochs of 64-px views on two selection
    draws of SynthDerm, in 108 s instead of 187 s; README)."""

    enabled: bool = True
    max_epochs: int = 14
    batch_size: int = 32
    depth: int | None = 6
    objective_options: dict[str, Any] = field(default_factory=lambda: {"view_size": 32})
    progress_bar: bool = True


@dataclass
class DemoProbeConfig:
    """The demo's probe stage: each probe on the demo-pretrained encoder and on the same architecture at
    random init (`panderm probe` on the demo's dermatology data)."""

    enabled: bool = True
    probes: list[str] = field(default_factory=lambda: ["linear_sweep", "knn"])
    subgroups: list[str] = field(default_factory=lambda: ["modality", "fitzpatrick"])
    bootstrap: int = 200


@dataclass
class DemoLongitudinalConfig:
    """The demo's longitudinal stage: `panderm probe probe=longitudinal` on SynthDerm follow-up pairs
    (melanomas change, benign lesions do not), for the demo-pretrained and the random-init encoder. The demo
    data has few follow-ups (about 66 pairs, 8 changed), so the stage generates its own archive of
    `n_patients` with a follow-up for `followup_fraction` of the lesions, and scores pairs out of fold
    (`folds`-fold cross-validation grouped by patient) rather than on a small test split."""

    enabled: bool = True
    n_patients: int = 80
    followup_fraction: float = 1.0
    combine: str = "both"
    folds: int = 5
    bootstrap: int = 200


@dataclass
class DemoSegmentConfig:
    """The demo's segmentation stage: each head on the frozen demo-pretrained encoder (the first head also
    at random init), trained on the demo's lesion masks (`panderm segment`). `fpn_upernet` is left out by
    default: its pyramid at 4x the token grid costs several times the encoder on a CPU. `precompute` encodes
    each image once (`panderm segment precompute=true`); `head_options` per head (UNETR at feature size 8:
    Dice 0.705 against 0.698 at MONAI's 16 on the demo data, in half the time)."""

    enabled: bool = True
    heads: list[str] = field(default_factory=lambda: ["linear", "unetr"])
    precompute: bool = True
    head_options: dict[str, Any] = field(default_factory=lambda: {"unetr": {"feature_size": 8}})
    max_epochs: int = 6
    batch_size: int = 32
    progress_bar: bool = True


@dataclass
class DemoVQAConfig:
    """The demo's region-VQA stage: the `expert` backend (the probe stage's linear classifier and the
    segmentation stage's best segmenter) on a region-VQA set generated from the demo data's test split."""

    enabled: bool = True
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    shown: int = 8


@dataclass
class DemoICLConfig:
    """The demo's in-context-learning stage: offline baselines (kNN-ICL with the pretrained encoder, majority,
    random) on ICL problems generated from the demo data, under SMMILE++ permutations, recency and noise."""

    enabled: bool = True
    n_problems: int = 24
    baselines: list[str] = field(default_factory=lambda: ["knn_icl", "majority", "random"])


@dataclass
class DemoReadersConfig:
    """The demo's reader-study stage: simulated readers of three experience levels read `n_cases` test images
    unaided and aided by the probe stage's predictions (malignant vs benign), analysed as `readers report`."""

    enabled: bool = True
    n_readers: int = 9
    n_cases: int = 200


@dataclass
class DemoConfig:
    """`panderm demo`: the end-to-end tour on the embedded synthetic data."""

    seed: int = 0
    image_size: int = 64
    data: DataConfig = field(default_factory=DataConfig)
    radiology: DataConfig = field(
        default_factory=lambda: DataConfig(source=DataSource.synthcxr, name="synthcxr", n_patients=80)
    )
    overview: OverviewConfig = field(default_factory=OverviewConfig)
    pretrain: DemoPretrainConfig = field(default_factory=lambda: DemoPretrainConfig())
    probe: DemoProbeConfig = field(default_factory=lambda: DemoProbeConfig())
    longitudinal: DemoLongitudinalConfig = field(default_factory=DemoLongitudinalConfig)
    segment: DemoSegmentConfig = field(default_factory=lambda: DemoSegmentConfig())
    vqa: DemoVQAConfig = field(default_factory=DemoVQAConfig)
    icl: DemoICLConfig = field(default_factory=DemoICLConfig)
    readers: DemoReadersConfig = field(default_factory=DemoReadersConfig)


@dataclass
class ProbeMethodConfig:
    """One probe (presets in configs/probe): `name` is linear_panderm, linear_sweep, knn, fewshot,
    label_efficiency or a case-level probe (longitudinal, survival, fusion); `options` are that probe's
    keyword arguments (an unknown one is an error)."""

    name: str = "linear_sweep"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeConfig:
    """`panderm probe`: a frozen encoder's features (or a features .npz) evaluated by one probe."""

    seed: int = 0
    encoder: str | None = "random:vit_tiny/8@64"
    # false: load the encoder checkpoint's matching tensors and log the rest (missing, unexpected, reshaped)
    encoder_strict: bool = True
    features: str | None = None
    pooling: str = "cls"
    batch_size: int = 64
    num_workers: int = 2
    device: str = "auto"
    # feature extraction processes: N GPUs (cuda:0..N-1) or N CPU processes, each encoding a share of the
    # images; the features and their cache are those of one process (probes/features.py)
    devices: int = 1
    cache_dir: str = "outputs/feature_cache"
    subgroups: list[str] = field(default_factory=list)
    bootstrap: int = 1000
    plots: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeMethodConfig = field(default_factory=ProbeMethodConfig)


@dataclass
class SegmentOptimConfig:
    """AdamW with warmup-cosine per step for segmentation; `layer_decay` scales the encoder's layers in
    fine-tuning (layer l of depth d gets lr · layer_decay^(d + 1 - l); the head gets the full lr)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    layer_decay: float | None = 0.75
    warmup_steps: int = 10
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 3.0


@dataclass
class PredictConfig:
    """How `panderm segment` predicts evaluation images: `resize` (the whole image to the training size,
    logits resampled back to the original size) or `sliding_window` (MONAI `sliding_window_inference` with
    training-size windows over the image rescaled by `scale`, for images larger than the training size)."""

    mode: str = "resize"
    scale: float = 1.0
    overlap: float = 0.25
    window_batch_size: int = 8
    postprocess: bool = True
    save_masks: bool = True
    splits: list[str] = field(default_factory=lambda: ["val", "test"])


@dataclass
class SegmentConfig:
    """`panderm segment`: a segmentation head on an encoder, frozen or fine-tuned, trained on the rows of
    `data` that have masks and evaluated with MONAI metrics (see configs/segment_command/segment.yaml)."""

    seed: int = 0
    encoder: str = "random:vit_tiny/8@64"
    # false: load the encoder checkpoint's matching tensors and log the rest (missing, unexpected, reshaped)
    encoder_strict: bool = True
    head: str = "linear"
    mode: str = "frozen"
    layers: list[int] | None = None
    head_options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    checkpoint: str | None = None
    # frozen only: encode each train/val image once (evaluation transform, no augmentation) and train the head
    # on those maps, eva's embeddings-then-head protocol; epochs then cost only the head
    precompute: bool = False
    # the best/median/worst overlay grid per evaluated split (figures/overlay_<split>.png)
    plots: bool = True
    batch_size: int = 32
    num_workers: int = 2
    on_nonfinite: str = "raise"
    data: DataConfig = field(default_factory=DataConfig)
    optim: SegmentOptimConfig = field(default_factory=SegmentOptimConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_epochs=10, log_every_n_steps=5))
    predict: PredictConfig = field(default_factory=PredictConfig)


@dataclass
class VQABackendConfig:
    """Which MLLM backend answers: `name` (hf | openai | expert), `model` (path, hub id or served name; the
    expert names itself), the prompt `adapter` (auto: by model family), `batch_size` (a batch for hf,
    parallel requests for openai) and the backend's `options` (e.g. base_url; classifier, segmenter)."""

    name: str = "expert"
    model: str | None = None
    adapter: str = "auto"
    batch_size: int = 8
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationConfig:
    """Decoding settings (greedy by default); see `panderm.mllm.backends.base.GenerationSettings`."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class VQAConfig:
    """`panderm vqa`: region-aware VQA with any backend, cached, resumable and scored per task.

    `data` is a MedRegA-format JSONL (None: a region-VQA set generated from `synth`, the embedded default);
    `task` keeps the samples of one task (all: every task; a file's tasks are inferred from its prompts
    unless `force_task`); `cache` is the response cache (default: `<run folder>/responses.jsonl`; rerunning
    into the same folder, or pointing at the same cache, resumes without repeating calls).

    Image paths in `data` must lie under `image_root` (default: the file's folder); `allow_outside_root=true`
    permits other files (only files that decode as images are ever sent). `max_failed_fraction` (0-1) fails
    the run when more than that share of its requests failed after the retries; null (the default) fails it
    only when every request failed, and 1.0 never (a partly failed run always reports how many failed).

    `dry_run` (`panderm vqa --dry-run`) renders and counts the requests and sends none
    (`panderm.mllm.dry_run`); `dry_run_tokenizer` is a local processor/tokenizer folder that gives a non-hf
    backend's token counts."""

    seed: int = 0
    data: str | None = None
    image_root: str | None = None
    allow_outside_root: bool = False
    task: str = "all"
    force_task: bool = False
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    limit: int | None = None
    synth: DataConfig = field(default_factory=DataConfig)
    backend: VQABackendConfig = field(default_factory=VQABackendConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    region_style: str = "medrega"
    cache: str | None = None
    retries: int = 3
    backoff: float = 0.5
    max_failed_fraction: float | None = None
    shown: int = 12
    progress: bool = True
    dry_run: bool = False
    dry_run_tokenizer: str | None = None


@dataclass
class ICLNoiseConfig:
    """`strategy=noise`: where the drawn demo goes (first, middle, last or indices) and whether it also
    replaces a demo; `source` is random (any other problem) or specialty (another problem of the same one)."""

    source: str = "random"
    positions: list[Any] = field(default_factory=lambda: ["first", "middle", "last"])
    replace: bool = True


@dataclass
class ICLJudgeConfig:
    """LLM-as-judge of open answers (off while `backend` is None); runs at temperature 0 through the cache."""

    backend: str | None = None
    model: str | None = None
    adapter: str = "auto"
    batch_size: int = 8
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ICLConfig:
    """`panderm icl`: in-context-learning experiments on SMMILE-format problems, cached and resumable.

    `problems` is a SMMILE-format file (None: problems generated from `synth`, the embedded default);
    `strategy` is original, zero_shot, smmile_pp, all_permutations, recency or noise; `mode` open or mcqa
    (options shuffled with `mcqa_seed`); `encoder` (a saved panderm encoder) is what kNN-ICL and the recency
    strategy's image similarity use; `cache` as in `panderm vqa` (rerun into the same folder to resume).
    `image_root` (default: the problems file's folder), `allow_outside_root`, `max_failed_fraction`, `dry_run`
    (`panderm icl --dry-run`; the judge is not dry-run) and `dry_run_tokenizer` as in `panderm vqa`."""

    seed: int = 0
    problems: str | None = None
    image_root: str | None = None
    allow_outside_root: bool = False
    limit: int | None = None
    synth: DataConfig = field(default_factory=DataConfig)
    n_problems: int = 24
    strategy: str = "smmile_pp"
    mode: str = "open"
    mcqa_seed: int = 42
    permutations: int = 24
    max_orders: int = 5040
    noise: ICLNoiseConfig = field(default_factory=ICLNoiseConfig)
    encoder: str | None = None
    strict: bool = False
    backend: VQABackendConfig = field(
        default_factory=lambda: VQABackendConfig(name="majority", batch_size=64)
    )
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=64))
    judge: ICLJudgeConfig = field(default_factory=ICLJudgeConfig)
    cache: str | None = None
    retries: int = 3
    backoff: float = 0.5
    max_failed_fraction: float | None = None
    n_boot: int = 2000
    progress: bool = True
    dry_run: bool = False
    dry_run_tokenizer: str | None = None


@dataclass
class BenchTaskConfig:
    """One task of a `panderm bench` suite. `type`: classification (binary or multi-class; a multi-label
    manifest runs the multi-label probe), multilabel, segmentation, fewshot, label_efficiency, or a
    case-level probe of the same name (longitudinal, survival, fusion; options in `probe_options.<type>`;
    no pairwise tests between encoders for these yet). `data` is a
    data config's fields; `probes` are probe presets (configs/probe_command/probe/) or, for segmentation,
    heads, with `probe_options` per probe/head merged into the preset's options; `metric` is the primary
    metric (default by type); `limit_per_split` keeps at most that many images per split (an int, or
    {split: n}; stratified by label, seeded) for quick runs; `options` are cell config overrides (dotted keys,
    e.g. `trainer.max_epochs: 1`). Segmentation: `eval_split` is scored, `train_from` names the task whose
    segmenter this one evaluates (an external test set), `baselines` adds centre_ellipse / otsu rows.
    Curves: `curve_point` picks one x (shot or fraction) instead of the mean over the curve."""

    name: str = "???"
    type: str = "classification"
    data: DataConfig = field(default_factory=DataConfig)
    probes: list[str] = field(default_factory=lambda: ["linear_sweep"])
    probe_options: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    limit_per_split: Any = None
    subgroups: list[str] = field(default_factory=list)
    eval_split: str = "test"
    train_from: str | None = None
    baselines: list[str] = field(default_factory=list)
    curve_point: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchSuiteConfig:
    """A suite (configs/bench_command/suite/): a name, a description and its tasks."""

    name: str = "???"
    description: str = ""
    tasks: list[BenchTaskConfig] = field(default_factory=list)


@dataclass
class BenchConfig:
    """`panderm bench`: every (encoder, task, probe, seed) cell of a suite, resumable, and a leaderboard.

    `encoders` are `panderm probe encoder=` specs; `tasks` keeps those tasks only (default all) and
    `skip_types` drops task types (e.g. [segmentation]); `limit` overrides every task's images per split and
    `seeds`, `probes` override every task's; `paths.<dataset>` points a task at its local copy (a task whose
    path is unset is skipped with a note); `data_root` is the folder of the shipped local data.
    `cache_dir` (default `<run>/feature_cache`) holds features and the prepared task data, shared by every
    cell (and by other runs pointed at it). `device`, `devices` (feature extraction processes: GPUs or CPU
    processes), `batch_size`, `num_workers`, `bootstrap` go to each cell; `cell_plots` draws each cell's
    figures; `max_epochs` overrides segmentation training; `n_boot` and `seed` drive the leaderboard's paired
    bootstrap."""

    seed: int = 0
    suite: BenchSuiteConfig = field(default_factory=BenchSuiteConfig)
    encoders: list[str] = field(default_factory=list)
    tasks: list[str] | None = None
    skip_types: list[str] = field(default_factory=list)
    limit: int | None = None
    seeds: list[int] | None = None
    probes: list[str] | None = None
    data_root: str = "../shared/data"
    paths: dict[str, str | None] = field(default_factory=dict)
    cache_dir: str | None = None
    device: str = "auto"
    devices: int = 1
    batch_size: int = 64
    num_workers: int = 0
    bootstrap: int = 1000
    n_boot: int = 1000
    max_epochs: int | None = None
    cell_plots: bool = False
    plots: bool = True
    progress: bool = True


@dataclass(frozen=True)
class Bound:
    """The allowed values of a numeric config field: `allows(value)` says whether one is, `text` says what is
    allowed in a message (`must be ...`)."""

    allows: Callable[[Any], bool]
    text: str


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


POSITIVE_INT = Bound(lambda v: _integer(v) and v > 0, "must be a positive integer")
NON_NEGATIVE_INT = Bound(lambda v: _integer(v) and v >= 0, "must be an integer >= 0")
LIMIT = Bound(lambda v: _integer(v) and (v > 0 or v == -1), "must be a positive integer, or -1 for no limit")
POSITIVE = Bound(lambda v: v > 0, "must be > 0")
NON_NEGATIVE = Bound(lambda v: v >= 0, "must be >= 0")
FRACTION = Bound(lambda v: 0 <= v <= 1, "must be in [0, 1]")
FRACTION_BELOW_ONE = Bound(lambda v: 0 <= v < 1, "must be in [0, 1)")
FRACTION_ABOVE_ZERO = Bound(lambda v: 0 < v <= 1, "must be in (0, 1]")
GREY_LEVEL = Bound(lambda v: _integer(v) and 0 <= v <= 255, "must be an integer in 0..255")

# The range of every numeric field, by field name: a name means the same thing in every schema (a new option
# named `batch_size` or `lr` is checked without more code). None is not checked: `int | None` fields use it
# for "not set". Lists and tuples (e.g. `betas`) are checked element by element.
VALUE_RANGES: dict[str, Bound] = {
    **dict.fromkeys(
        ["batch_size", "window_batch_size", "image_size", "patch_size", "depth", "n_patients", "num_nodes"],
        POSITIVE_INT,
    ),
    **dict.fromkeys(["log_every_n_steps", "max_images", "k", "max_new_tokens", "limit"], POSITIVE_INT),
    **dict.fromkeys(
        ["n_problems", "permutations", "max_orders", "n_boot", "n_readers", "n_cases"], POSITIVE_INT
    ),
    **dict.fromkeys(
        ["num_workers", "bootstrap", "warmup_steps", "every_n_steps", "checkpoint_every_n_steps", "retries"],
        NON_NEGATIVE_INT,
    ),
    **dict.fromkeys(["shown", "n_samples"], NON_NEGATIVE_INT),
    **dict.fromkeys(["max_epochs", "max_steps"], LIMIT),
    **dict.fromkeys(["lr", "base_lr", "probe_lr", "scale", "clip_grad", "init_values"], POSITIVE),
    **dict.fromkeys(["weight_decay", "temperature", "backoff"], NON_NEGATIVE),
    **dict.fromkeys(["warmup_fraction", "mask_ratio", "drop_path_rate", "max_failed_fraction"], FRACTION),
    **dict.fromkeys(["overlap", "betas"], FRACTION_BELOW_ONE),
    **dict.fromkeys(["layer_decay", "top_p"], FRACTION_ABOVE_ZERO),
    "mask_threshold": GREY_LEVEL,
}


def config_problems(cfg: Any, prefix: str = "") -> list[str]:
    """Every value of `cfg` (a structured `DictConfig` as Hydra composes it, or a config dataclass) outside
    its range in `VALUE_RANGES`, nested configs included, as ``key=value: must be ...`` with the key as it is
    typed on the command line (`prefix` goes before it, e.g. "data.")."""
    schema = OmegaConf.get_type(cfg) if isinstance(cfg, DictConfig) else type(cfg)
    if schema is None or not is_dataclass(schema):
        return []
    problems = []
    for item in fields(schema):
        if isinstance(cfg, DictConfig):
            if item.name not in cfg or OmegaConf.is_missing(cfg, item.name):
                continue
            value = cfg[item.name]
        else:
            value = getattr(cfg, item.name)
        key = f"{prefix}{item.name}"
        if isinstance(value, DictConfig) or (is_dataclass(value) and not isinstance(value, type)):
            problems += config_problems(value, f"{key}.")
            continue
        bound = VALUE_RANGES.get(item.name)
        if bound is None or value is None:
            continue
        listed = isinstance(value, ListConfig | list | tuple)
        values = list(value) if listed else [value]
        if not all(_allowed(bound, v) for v in values):
            shown = "[" + ",".join(str(v) for v in values) + "]" if listed else value
            problems.append(f"{key}={shown}: {bound.text}")
    return problems


def _allowed(bound: Bound, value: Any) -> bool:
    try:
        return bool(bound.allows(value))
    except TypeError:  # not a number at all (e.g. a string in an `Any` field)
        return False


def validate_config(cfg: Any, prefix: str = "", *, command: str | None = None) -> None:
    """Check every numeric value of `cfg` against `VALUE_RANGES` (see `config_problems`) before anything runs.

    Raises `ConfigError` listing every value out of range, each as ``key=value: must be ...``; `command`
    (e.g. "probe") names the `panderm` command whose config it is.
    """
    problems = config_problems(cfg, prefix)
    if problems:
        where = f"the `panderm {command}` config" if command else "the config"
        raise ConfigError(
            f"{len(problems)} invalid value(s) in {where}; set each on the command line as key=value:\n  "
            + "\n  ".join(problems)
        )


def register_configs() -> None:
    """Register the schemas; idempotent."""
    store = ConfigStore.instance()
    store.store(name="demo_schema", node=DemoConfig)
    store.store(name="pretrain_schema", node=PretrainConfig)
    store.store(name="probe_schema", node=ProbeConfig)
    store.store(name="segment_schema", node=SegmentConfig)
    store.store(name="vqa_schema", node=VQAConfig)
    store.store(name="icl_schema", node=ICLConfig)
    store.store(name="bench_schema", node=BenchConfig)
    # not in a group: `data` must stay a plain value for `panderm vqa data=<file>` (configs/data/*.yaml and
    # their `synth` alias in vqa_command name the schema by its absolute path)
    store.store(name="data_schema", node=DataConfig)
