"""`pipeline.toml`: typed sections, validated once before any work starts.

Every error is one line naming the file and the key at fault, e.g.
``pipeline.toml: [harvest] layer: expected int, got str``. Paths in the config are relative to the
current working directory (as in SAELens and most CLIs), so the same file works from any checkout.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthosae.common import overrides, variants
from orthosae.common.errors import ConfigError  # its home is errors.py (overrides.py raises it too)

DTYPES = ("float32", "bfloat16", "float16")


def budget_key(b: float, part: str = "") -> str:
    """The report's key of F at retain budget ``b`` ([eval.unlearning] retain_budgets): ``F_0.1``, and
    with a ``part`` its split or flag, ``F_0.1_domain``, ``F_0.1_origin``."""
    return f"F_{b:g}_{part}" if part else f"F_{b:g}"


def _choice(*options: str):
    def check(value):
        if value not in options:
            return f"must be one of {', '.join(options)}, got {value!r}"

    return check


def _positive(value):
    if isinstance(value, list):
        bad = [v for v in value if not v > 0]
        return f"every entry must be > 0, got {bad[0]!r}" if bad else None
    if not value > 0:
        return f"must be > 0, got {value!r}"


def _non_negative(value):
    if value < 0:
        return f"must be >= 0, got {value!r}"


def _fraction(value):
    if not 0 <= value < 1:
        return f"must be in [0, 1), got {value!r}"


# A name that becomes a path (a run folder, a report folder, a store group): letters, digits and
# ._+- only, not starting with a dot, so no name can reach outside its folder ("..", "a/b", "~").
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")
# Beyond these the first allocation fails (d_sae × d_model floats) or an int is not an int64.
MAX_D_SAE = 1 << 24
MAX_INT = (1 << 63) - 1


def _safe_name(value):
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        return (
            f"{value!r} is not a safe name (it names a folder): letters, digits and ._+- only, "
            "not starting with '.' or '-', at most 128 characters"
        )


def _layer_list(value):
    bad = [v for v in value if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0)]
    if bad:
        return f"expected block indices (ints >= 0), got {bad[0]!r}"
    dup = [v for i, v in enumerate(value) if v in value[:i]]
    if dup:
        return f"layer {dup[0]} listed twice"


def _d_sae(value):
    return _positive(value) or (
        f"must be at most {MAX_D_SAE:,} (2^24 features), got {value!r}" if value > MAX_D_SAE else None
    )


def _key(default=dataclasses.MISSING, check=None, doc: str = ""):
    """A config key: default, optional validator returning an error string, and its documentation.

    The sections below declare their keys one a line, as the README's tables list them, between
    ``# fmt: off`` and ``# fmt: on``: the formatter would spread each long doc over five lines."""
    meta = {"check": check, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    id: str = _key(doc='"embedded:gemma-3-270m" (offline default) or a Hugging Face id / local dir')
    revision: str = _key("main", doc="hub revision (branch, tag or commit) recorded in the store")
    dtype: str = _key("float32", _choice(*DTYPES), "compute dtype of the forward pass")
    device: str = _key("auto", doc='"auto" (cuda if present), "cpu", "cuda", "cuda:N"')
    trust_remote_code: bool = _key(False, doc="only when a hub model needs its own code")
    d_model: int | None = _key(None, _positive, "optional: checked against the model when given")


@dataclass(frozen=True, kw_only=True)
class HarvestConfig:
    # fmt: off
    layer: int | None = _key(None, _non_negative, "block index L; the hook is the residual stream after block L (or `layers`)")
    layers: list = _key([], _layer_list, "several blocks in one model pass, e.g. [6, 12, 19]: every listed block is written, the pass stops after the deepest; one store per layer (`store` holds `{layer}`); each [[runs]] table then names its `layer`")
    store: str = _key(doc="zarr store URL: a local path or any fsspec URL zarr accepts (s3://, gs://); `{layer}` in it is replaced by the layer (needed with several `layers`)")
    hook: str = _key("resid_post", _choice("resid_post"), "residual stream after block `layer` (the same hook at every layer: the residual stream is the one hook harvested)")
    context_length: int = _key(128, _positive, "tokens per context including the leading BOS")
    batch_size: int = _key(8, _positive, "contexts per forward pass")
    chunk_tokens: int = _key(8192, _positive, "rows per zarr chunk (rounded down to whole contexts)")
    codec: str = _key("zstd", _choice("zstd", "blosc", "none"), "compressor for activation chunks")
    level: int = _key(3, _non_negative, "compression level")
    storage_dtype: str = _key("bfloat16", _choice(*DTYPES), "bfloat16 is stored as uint16 bit patterns")
    heldout_fraction: float = _key(0.1, _fraction, "documents (by text hash) kept out of training splits")
    order_seed: int = _key(0, _non_negative, "seeds each corpus's document order, drawn before its token budget is filled: stratified by label where the source has one (embedded:wiki: topic; else `label_field`), shuffled otherwise; recorded in the store")
    # fmt: on

    @property
    def all_layers(self) -> tuple[int, ...]:
        """Every harvested block: `layers`, or the one `layer`."""
        return tuple(self.layers) if self.layers else (self.layer,)

    def store_for(self, layer: int) -> str:
        """The store of `layer`: `store` with `{layer}` replaced."""
        return self.store.replace("{layer}", str(layer))


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """One [corpora.<name>] table: what `common.corpora.load_documents` reads and the harvest plans
    (with the [harvest] keys shared by every corpus: heldout_fraction, order_seed)."""

    name: str
    # fmt: off
    source: str = _key(doc='"embedded:wiki", "hf:<dataset>" or "file:<path.jsonl|.txt>"')
    role: str = _key(check=_choice("retain", "forget"), doc="what unlearning should keep or remove")
    split: str = _key("train", _choice("train", "heldout"), "heldout documents are never trained on")
    tokens: int = _key(check=_positive, doc="token budget for this corpus (rows stored = budget minus BOS)")
    subset: str | None = _key(None, doc='embedded:wiki: "retain"/"forget" (biology is forget), or "retain:<topic>"/"forget:<topic>" around another topic; hf: dataset config name')
    hf_split: str = _key("train", doc="hf datasets split to read")
    text_field: str = _key("text", doc="field holding the document text (hf and jsonl)")
    min_chars: int = _key(1, _non_negative, "drop documents shorter than this (WikiText blank lines)")
    label_field: str | None = _key(None, doc="hf and .jsonl/.json: record field holding a document's label (its order is stratified by it); embedded:wiki always uses its topic")
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    # fmt: off
    runs_dir: str = _key("runs", doc="one folder per run: sae_weights.safetensors, cfg.json, log.jsonl")
    d_sae: int = _key(2048, _d_sae, "dictionary size")
    batch_size: int = _key(1024, _positive, "activation rows per optimiser step")
    tokens: int = _key(1_000_000, _positive, "training tokens (steps = tokens // batch_size); loops epochs")
    mix: dict = _key({}, doc="corpus name -> proportion of each batch; empty = proportional to size")
    lr: float = _key(4e-4, _positive, "Adam learning rate")
    adam_betas: list = _key([0.9, 0.999], doc="Adam (beta1, beta2)")
    lr_warmup_steps: int = _key(100, _non_negative, "linear lr warm-up")
    lr_decay_frac: float = _key(0.2, _fraction, "final fraction of steps with linear decay to 0")
    l1_coefficient: float = _key(5.0, _non_negative, "λ1, weight of L_sparse (the start value when `target_l0` is set; may be 0 with topk / batchtopk)")
    l1_warmup_steps: int = _key(100, _non_negative, "λ1 ramps linearly from 0 (SAELens style)")
    grad_clip: float = _key(1.0, _non_negative, "max gradient norm (0 = off)")
    normalize: bool = _key(True, doc="scale activations to E‖x‖² = d_model (SAELens' convention); scale saved in cfg.json")
    buffer_rows: int = _key(65536, _positive, "shuffle window; loader memory is set by this, not the cache: per corpus pool the window served and the next, read ahead, as stored")
    heldout_rows: int = _key(0, _non_negative, "rows at the end of each train group also kept out")
    seed: int = _key(0, doc="seeds the shared data stream (order, sampling) and the SAE init of runs without `seeds`; a run's `seeds = [...]` entry sets its own init seed here")
    device: str = _key("auto", doc='"auto", "cpu", "cuda", "cuda:N"')
    matmul_precision: str = _key("highest", _choice("highest", "high"), "float32 matmuls: highest = full fp32; high = TF32 on CUDA (~3× faster, ~1e-3 relative error per product); L_ortho stays fp32 (docs/method.md, Precision)")
    checkpoint_every: int = _key(500, _positive, "steps between checkpoints")
    log_every: int = _key(10, _positive, "steps between JSONL log lines")
    dead_window: int = _key(200, _positive, "steps a feature may stay silent before it counts as dead")
    resample_dead: bool = _key(False, doc="re-initialise dead features from high-loss rows")
    activation: str = _key("relu", _choice("relu", "topk", "batchtopk"), "relu (L1-penalised), topk (the k largest per row) or batchtopk (the k·batch largest over the batch; a learned threshold at inference), SAELens' recipes")
    k: int = _key(0, _non_negative, "active features per token for topk / batchtopk (batchtopk: on average)")
    target_l0: float = _key(0.0, _non_negative, "relu only: adapt λ1 during training so the batch L0 lands here (0 = off, λ1 fixed; see docs/method.md, Seeds, grids and equal sparsity)")
    l0_gain: float = _key(0.03, _positive, "target_l0 controller: λ1 *= exp(gain·log(L0_batch/target_l0)) per step after the λ1 warm-up (log error clipped to ±1)")
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class OrthoConfig:
    # fmt: off
    lambda2_max: float = _key(30.0, _non_negative, "λ2_max: weight of L_ortho once warmed up (per pair of features in the rms and hinge modes; see docs/method.md)")
    t0: int = _key(500, _positive, "steps over which λ2(t) = λ2_max·min(1, t/t0) ramps (adaptive)")
    alpha: float = _key(0.0, _non_negative, "α: allowed cosine of sharing between groups (rms: allowed RMS cosine; hinge: allowed |cos| per pair); random unit vectors sit at 1/√d_model")
    alpha_mode: str = _key("rms", _choice("rms", "hinge", "seed"), "form of L_ortho: rms (mean squared cosine beyond α²), hinge (Σ relu(|cos|−α)² per pair), seed (‖W_gᵀW_h − αI‖_F)")
    weights: str = _key("decoder", _choice("decoder", "encoder"), "which weights L_ortho constrains")
    weighting: str = _key("activity", _choice("activity", "uniform"), "rms / hinge: weigh each pair of features by their activation mass in the batch (activity) or equally (uniform)")
    groups: int = _key(2, _positive, "number of feature groups G")
    regroup_every: int = _key(100, _positive, "n: steps between group re-assignments (none at the last step)")
    regroup_min_mass: float = _key(1e-4, _non_negative, "a feature moves only with at least this EMA activation mass per row (normalised units): one stray activation moves nothing")
    regroup_margin: float = _key(0.05, _fraction, "hysteresis: a feature leaves its group only when its forget share is this far past the group's bin edge")
    gram_dtype: str = _key("float32", _choice("float32", "bfloat16"), "rms: input precision of the exact L_ortho's d_model × d_model Grams (float32 accumulation either way); bfloat16 halves their cost where bf16 matmuls are fast (docs/design.md, The cost of L_ortho)")
    every: int = _key(1, _positive, "apply L_ortho every k steps with weight k·λ2(t) (lazy regularisation: cost ÷ k; 1 = every step, the exact loss)")
    stats_decay: float = _key(0.99, _fraction, "EMA decay of per-feature forget/retain activation mass")
    tau: float = _key(0.05, _non_negative, "τ in the group-bias mix π_g = m_g/(Σm + τ): smooth as a token's activation mass Σm → 0 (activation units)")
    stop_eff_rank: float = _key(0.1, _fraction, "stop early when a group's effective rank / min(n_g, d_model) falls below this (0 = never)")
    stop_max_cos: float = _key(0.999, _positive, "stop early when two features of one group reach this |cos| (duplicates; > 1 = never)")
    # fmt: on


# [train.ortho] keys removed from the product, with their old neutral value: a config (or --set) that
# sets one fails with the unknown-key error saying so; an old export's cfg.json holding the neutral
# value still loads (``RunConfig.from_dict``).
REMOVED_ORTHO_KEYS = {"sketch": 0}
REMOVED_WHY = (
    'removed in issue 25: the sketched L_ortho trained badly (docs/method-results.md, "The '
    'sketched L_ortho"; it lives on in bench/sketch_noise.py)'
)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One run's settings, whole: its [[runs]] name and type plus the [train] and [train.ortho]
    sections after the run's overrides. The SAE and its Trainer read every setting from here under
    its `pipeline.toml` name, and `cfg.json` saves it as `to_dict()`."""

    name: str
    type: str
    train: TrainConfig
    ortho: OrthoConfig
    overrides: dict = field(default_factory=dict)  # the keys this run's [[runs]] table set
    layer: int | None = None  # the harvested block this run trains on ([[runs]] layer; one harvested: that one)

    @property
    def variant(self) -> variants.Variant:
        """The run type's entry in the variant table (common/variants.py)."""
        v = variants.VARIANTS.get(self.type)
        if v is None:
            raise ConfigError(
                f"run {self.name} type: unknown SAE variant {self.type!r} (known: {', '.join(variants.VARIANTS)})"
            )
        return v

    @property
    def has_ortho(self) -> bool:
        return self.variant.has_ortho

    @property
    def condition(self) -> str:
        """The run's name without the `-s<seed>` its `seeds` list added: seeds of one setting share it."""
        suffix = f"-s{self.train.seed}"
        return self.name[: -len(suffix)] if "seed" in self.overrides and self.name.endswith(suffix) else self.name

    @property
    def grouped(self) -> bool:
        """Learned feature groups with their own decoder biases (the method)."""
        return self.variant.grouped

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "layer": self.layer,
            "train": _asdict(self.train),
            "ortho": _asdict(self.ortho),
            "overrides": dict(self.overrides),
        }

    @classmethod
    def of(
        cls,
        type: str,
        name: str | None = None,
        *,
        train: "TrainConfig | None" = None,
        ortho: "OrthoConfig | None" = None,
        layer: int | None = None,
        **keys,
    ) -> "RunConfig":
        """A run from [train] / [train.ortho] keys over given (or default) sections: for notebooks,
        tests and benchmarks. Keys are checked against the sections' names, not validated."""
        unknown = set(keys) - TRAIN_KEYS - ORTHO_KEYS
        if unknown:
            raise ConfigError(f"RunConfig.of: unknown key(s) {sorted(unknown)}")
        train = dataclasses.replace(train or TrainConfig(), **{k: v for k, v in keys.items() if k in TRAIN_KEYS})
        ortho = dataclasses.replace(ortho or OrthoConfig(), **{k: v for k, v in keys.items() if k in ORTHO_KEYS})
        return cls(name=name or type, type=type, train=train, ortho=ortho, overrides=keys, layer=layer)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        ortho = dict(d["ortho"])
        for key, neutral in REMOVED_ORTHO_KEYS.items():  # an export written before the key's removal
            if key in ortho and ortho.pop(key) != neutral:
                raise ConfigError(f"run {d['name']} [train.ortho] {key}: {REMOVED_WHY}")
        return cls(
            name=d["name"],
            type=d["type"],
            train=TrainConfig(**d["train"]),
            ortho=OrthoConfig(**ortho),
            overrides=dict(d.get("overrides", {})),
            layer=d.get("layer"),
        )


@dataclass(frozen=True, kw_only=True)
class UnlearningConfig:
    # fmt: off
    modes: list = _key(["mcq", "loss"], doc='"mcq" (SAEBench accuracy) and/or "loss" (CE selectivity)')
    forget_questions: str = _key("embedded:mmlu", doc="MCQ source for the forget set")
    forget_subjects: list = _key(["high_school_biology", "college_biology", "virology", "medical_genetics", "anatomy"])
    retain_questions: str = _key("embedded:mmlu", doc="MCQ source for the retain set")
    retain_subjects: list = _key(["high_school_us_history", "college_computer_science", "high_school_geography", "human_aging"])
    max_questions: int = _key(0, _non_negative, "cap per set (0 = all)")
    chat_template: bool = _key(False, doc="wrap prompts in the tokenizer's chat template (-it models)")
    all_permutations: bool = _key(True, doc="SAEBench: a question counts only if the base model answers all 24 orderings right (false: the given order only)")
    retain_thresholds: list = _key([0.01], _positive, "max feature frequency on retain rows")
    n_features_list: list = _key([10, 20], _positive, "how many forget features to clamp")
    multipliers: list = _key([25.0, 50.0], _positive, "clamp value −multiplier in activation units")
    loss_contexts: int = _key(0, _non_negative, "held-out contexts per corpus for the loss-based mode (0 = every held-out context the store has)")
    retain_budgets: list = _key([0.03, 0.1], _positive, "retain ΔCE budgets b (nats) at which F(b), the forget ΔCE at matched retain damage, is reported (docs/evaluation.md)")
    domain_ratio: float = _key(4.0, _positive, "a token is a forget-domain token when its frequency in forget training text is at least this many times its (+1-smoothed) retain frequency")
    domain_min_count: int = _key(10, _positive, "a forget-domain token also occurs at least this many times in forget training text")
    references: list = _key(["forget_share", "diff_of_means"], doc="label-using references measured on the same curve: forget_share (baseline features ranked by forget share of activation mass), diff_of_means (SAE-free: project the forget − retain mean direction out at the layer)")
    projection_scales: list = _key([0.5, 1.0, 2.0], _positive, "diff_of_means: the edit's strengths s in x − s·(x·d̂)d̂ (1 = the direction projected out)")
    forget_share_condition: str = _key("", doc='the baseline condition (a run name without its -s<seed>) whose runs get the forget_share reference ("" = every baseline run)')
    forget_share_runs: int = _key(0, _non_negative, "how many runs of each such condition, lowest seeds first, get the forget_share reference (0 = all): each costs a full clamp sweep")
    pi_ablation: bool = _key(True, doc="grouped SAEs: also rerun the largest setting with π following the clamp, so the clamp removes group bias too (one more pass per grouped run)")
    # fmt: on


def _int_list(value):
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return f"expected a non-empty list of integers > 0, got {value!r}"


def _unit(value):
    if not 0 <= value <= 1:
        return f"must be in [0, 1], got {value!r}"


PROBING_DATASETS = ("embedded:wiki_topics", "embedded:wiki_language", "embedded:mmlu_categories")


@dataclass(frozen=True, kw_only=True)
class ProbingConfig:
    # fmt: off
    enabled: bool = _key(False, doc="run SAEBench sparse probing (docs/evaluation.md)")
    datasets: list = _key(list(PROBING_DATASETS), doc='"embedded:wiki_topics" | "embedded:wiki_language" | "embedded:mmlu_categories" | "hf:<SAEBench dataset>" | "file:<.jsonl with text, label>"')
    train_size: int = _key(4000, _positive, "probe training texts per class (SAEBench: 4000)")
    test_size: int = _key(1000, _positive, "probe test texts per class (SAEBench: 1000)")
    context_length: int = _key(128, _positive, "tokens per text incl. BOS (longer texts are truncated)")
    k_values: list = _key([1, 2, 5], _int_list, "top-k sizes of the LLM and SAE probes (mean-difference selection)")
    seed: int = _key(42, doc="seeds the text sample, the probes' negatives and the probes")
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class TppConfig:
    enabled: bool = _key(False, doc="run SAEBench TPP (targeted probe perturbation)")
    dataset: str = _key("embedded:wiki_topics", doc="one of [eval.probing] datasets (its texts, probes and sizes)")
    n_values: list = _key([2, 5, 10, 20, 50, 100, 500], _int_list, "latents zero-ablated per class (SAEBench's grid)")


# SCR's topics: the English wiki extracts' topic and its name in the French and Spanish extracts of the
# same wheel (topics without a clear counterpart, e.g. "Physical sciences" vs French "Science", are left out)
SCR_TOPIC_NAMES = {
    "People": {"fr": "Personnalités", "es": "Personas"},
    "Biology and health sciences": {"fr": "Santé et médecine"},
    "Geography": {"fr": "Géographie", "es": "Geografía"},
    "Society and social sciences": {"fr": "Société et sciences sociales"},
    "Technology": {"fr": "Technologie", "es": "Tecnología"},
    "History": {"fr": "Histoire", "es": "Historia"},
    "Arts": {"fr": "Arts et culture", "es": "Artes"},
    "Everyday life": {"fr": "Vie quotidienne"},
    "Philosophy and religion": {"fr": "Philosophie et religion", "es": "Filosofía y religión"},
    "Mathematics": {"fr": "Mathématiques", "es": "Matemáticas"},
}
SCR_LANGUAGES = ("en", "fr", "es")


def _quarters(value):
    if not value >= 4 or value % 4:
        return f"must be a multiple of 4 (a quarter per topic x language cell), got {value!r}"


@dataclass(frozen=True, kw_only=True)
class ScrConfig:
    # fmt: off
    enabled: bool = _key(False, doc="run SAEBench SCR (spurious correlation removal): wiki topic x language")
    topic_pairs: list = _key([["People", "Geography"]], doc="[[topic 1, topic 2], ...]: the probed attribute, English wiki topic names with a French / Spanish counterpart; pairs are averaged")
    languages: list = _key(["en", "fr"], doc="the spurious attribute: two of en (held-out extracts), fr, es")
    train_size: int = _key(64, _quarters, "texts per probe training set (SAEBench: 4000): biased set = size/2 of (topic 1, lang 1) + size/2 of (topic 2, lang 2)")
    test_size: int = _key(32, _quarters, "texts per balanced test set, a quarter per cell (SAEBench: 1000)")
    context_length: int = _key(128, _positive, "tokens per text incl. BOS (SAEBench: 128)")
    n_values: list = _key([2, 5, 10, 20, 50, 100, 500], _int_list, "latents zero-ablated (SAEBench's grid)")
    seed: int = _key(42, doc="seeds the text sample and the probes")
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class AbsorptionConfig:
    enabled: bool = _key(False, doc="run SAEBench first-letter absorption")
    words: int = _key(0, _non_negative, "alphabetic vocabulary tokens sampled (0 = all, SAEBench)")
    icl_examples: int = _key(10, _non_negative, "in-context examples per prompt (SAEBench: 10)")
    prompt_template: str = _key("{word} has the first letter:", doc="SAEBench's first-letter prompt")
    test_fraction: float = _key(0.2, _fraction, "share of the words held out for scoring (SAEBench: 0.2)")
    max_k: int = _key(10, _positive, "largest k of the k-sparse probes (k = 1..max_k)")
    f1_jump: float = _key(0.03, _non_negative, "F1 gain at which k -> k+1 counts as a split feature")
    min_probe_f1: float = _key(0.6, _unit, "letters whose LLM probe F1 is below this are left out")
    min_letters: int = _key(20, _positive, "fewer passing letters: absorption is not scored (SAEBench: 20)")
    seed: int = _key(42, doc="seeds the word sample, the ICL examples, the split and the probes")


@dataclass(frozen=True, kw_only=True)
class SpreadConfig:
    # fmt: off
    runs: int = _key(3, _positive, "how many of the condition's runs (lowest seeds first) get the draws")
    condition: str = _key("", doc='a condition (a run name without its -s<seed>) whose seed-to-seed spread of F(b) and cross-fitted selectivity is split into SAE seed, selection rows and eval documents (docs/evaluation.md); "" = off')
    selection_draws: int = _key(3, _positive, "bootstrap draws of the selection rows per run (the training contexts frequencies are counted on, drawn with replacement)")
    seed: int = _key(0, _non_negative, "seeds the draws")
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    # fmt: off
    reports_dir: str = _key("reports", doc="reports/<name>/ gets report.json, report.md, *.png")
    name: str = _key("default", _safe_name, "report folder name")
    rows: int = _key(20000, _positive, "held-out rows for reconstruction metrics")
    frequency_rows: int = _key(0, _non_negative, "training rows feature frequencies (unlearning's selection, post-hoc groups) are counted on: 0 = every row of the training corpora; N = a seeded sample of about N rows, whole contexts spread over all documents")
    frequency_seed: int = _key(0, _non_negative, "seeds the frequency_rows sample (contexts chosen by a hash of the seed and their tokens, so the store's order does not matter)")
    ce_contexts: int = _key(32, _positive, "held-out contexts for the spliced CE / KL scores")
    batch_size: int = _key(8, _positive, "contexts per model forward in eval")
    primary_figure: str = _key("", doc="the report's primary unlearning figure, e.g. \"F_0.1\" (F(b) at a [eval.unlearning] retain_budgets value); \"\" = F at the largest budget. Judged against the baseline curve for every condition, Holm-corrected with primary_pairs")
    primary_quality: str = _key("ce_loss_score_docs", _choice("ce_loss_score_docs", "explained_variance_docs"), "the quality axis the primary figure is judged at (both measured on the unlearning's held-out documents, bootstrapped with F(b))")
    primary_pairs: list = _key([], doc="[[condition A, condition B], ...]: seed-paired comparisons on the primary figure that join the Holm family (e.g. adaptive against fixed)")
    # fmt: on
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    tpp: TppConfig = field(default_factory=TppConfig)
    scr: ScrConfig = field(default_factory=ScrConfig)
    absorption: AbsorptionConfig = field(default_factory=AbsorptionConfig)
    spread: SpreadConfig = field(default_factory=SpreadConfig)


def _percent(value):
    if not 1 <= value <= 100:
        return f"must be in 1..100, got {value!r}"


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    # fmt: off
    progress_seconds: float = _key(30.0, _non_negative, "seconds between plain progress lines (printed instead of bars without a terminal: batch jobs, `> log`) and between progress events in the event log (0 = at every update)")
    progress_percent: int = _key(25, _percent, "also a line and an event at every this many percent (25: 0/25/50/75/100 %)")
    tracker: str = _key("none", _choice("none", "wandb", "trackio"), "run tracker: wandb (`pip install 'orthosae[wandb]'`; WANDB_MODE=offline without network) or trackio (local SQLite; `pip install 'orthosae[trackio]'`): one tracked run per SAE run, grouped by config (docs/tools.md)")
    tracker_project: str = _key("orthosae", doc="the tracker's project the runs are logged to")
    # fmt: on


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path
    model: ModelConfig
    harvest: HarvestConfig
    corpora: dict[str, CorpusConfig]
    train: TrainConfig
    ortho: OrthoConfig
    runs: list[RunConfig]
    eval: EvalConfig
    log: LogConfig = field(default_factory=LogConfig)
    sets: tuple[str, ...] = ()  # the `pipe --set KEY=VALUE` overrides applied over the file, in order

    @property
    def layers(self) -> tuple[int, ...]:
        """The harvested blocks, in `[harvest]` order."""
        return self.harvest.all_layers

    def at_layer(self, layer: int) -> "Config":
        """The config as one layer sees it: `[harvest] layer = L` and that layer's store, the runs on
        it, and (several layers harvested) its report in `<reports_dir>/<name>/L<layer>/`. Every stage
        reads a one-layer config as before; one with several layers is run one view at a time."""
        if len(self.layers) == 1:
            return self
        harvest = dataclasses.replace(self.harvest, layer=layer, layers=[], store=self.harvest.store_for(layer))
        ev = dataclasses.replace(
            self.eval, reports_dir=str(Path(self.eval.reports_dir) / self.eval.name), name=f"L{layer}"
        )
        return dataclasses.replace(self, harvest=harvest, eval=ev, runs=[r for r in self.runs if r.layer == layer])

    def layer_views(self) -> list["Config"]:
        return [self.at_layer(layer) for layer in self.layers]

    def view_of(self, run_name: str) -> "Config":
        """The layer view that holds run `run_name`."""
        return self.at_layer(self.run(run_name).layer)

    def run(self, name: str) -> RunConfig:
        for run in self.runs:
            if run.name == name:
                return run
        raise ConfigError(
            f"{self.path}: no [[runs]] entry named {name!r} (have: {', '.join(r.name for r in self.runs)})"
        )


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:  # TOML ints are fine where floats are expected
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or annotation)


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("<class '", "").replace("'>", "").replace("typing.", "")


def _build(cls, raw: Any, where: str, file: Path, extra: dict | None = None):
    """Construct dataclass `cls` from a TOML table, naming `where` in every error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: {where}: expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known or key in (extra or {}):
            if cls is OrthoConfig and key in REMOVED_ORTHO_KEYS:
                raise ConfigError(f"{file}: {where} {key}: unknown key ({REMOVED_WHY})")
            raise ConfigError(
                f"{file}: {where} {key}: unknown key (known: {', '.join(k for k in known if k not in (extra or {}))})"
            )
    kwargs = dict(extra or {})
    for name, f in known.items():
        if name in kwargs:
            continue
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{file}: {where} {name}: required key is missing")
            continue
        value, hint = raw[name], hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where[:-1]}.{name}]", file)
            continue
        if not _type_ok(value, hint):
            raise ConfigError(
                f"{file}: {where} {name}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{file}: {where} {name}: must be finite, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ConfigError(f"{file}: {where} {name}: {value} is beyond a 64-bit integer")
        check = f.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            raise ConfigError(f"{file}: {where} {name}: {problem}")
        kwargs[name] = value
    return cls(**kwargs)


TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
ORTHO_KEYS = {f.name for f in dataclasses.fields(OrthoConfig)}
# Keys that define the shared data stream: every run of one config trains on the same batches.
STREAM_KEYS = {
    "batch_size",
    "tokens",
    "mix",
    "normalize",
    "buffer_rows",
    "heldout_rows",
    "seed",
    "device",
    "runs_dir",
    "checkpoint_every",
    "log_every",
    "matmul_precision",
}
RUN_OVERRIDABLE = (TRAIN_KEYS - STREAM_KEYS) | ORTHO_KEYS


# [[runs]] keys that may hold a list of values (a grid): every [train] / [train.ortho] key a run may
# override whose value is a single number, string or bool. `seeds` is the run's list of init seeds.
SWEEPABLE = {
    f.name
    for cls in (TrainConfig, OrthoConfig)
    for f in dataclasses.fields(cls)
    if f.name in RUN_OVERRIDABLE and f.type in ("int", "float", "str", "bool")
}


def _name_value(value) -> str:
    """A value as it appears in an expanded run name: 0.04 -> "0.04", 100.0 -> "100", 1e-05 -> "1e-05"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def expand_run_table(table: dict, file: Path, where: str) -> list[tuple[str, dict]]:
    """One [[runs]] table -> [(run name, overrides)], one per grid point and seed.

    List values of ``SWEEPABLE`` keys form a grid (their product, in the order the keys appear in
    the table, the first key varying slowest); ``seeds = [s, ...]`` varies fastest and sets each
    run's ``seed`` (its SAE init). The name is the table's name, then ``-<key><value>`` for each
    list-valued key in table order, then ``-L<layer>`` when ``layer`` is a list (each block a run), then
    ``-s<seed>`` when ``seeds`` is given:
    ``name = "adaptive"``, ``alpha = [0.0, 0.04]``, ``seeds = [0, 1]`` gives ``adaptive-alpha0-s0``,
    ``adaptive-alpha0-s1``, ``adaptive-alpha0.04-s0``, ``adaptive-alpha0.04-s1``. Keys with one
    value (not a list) stay out of the name."""
    name = table["name"]
    fixed = {k: v for k, v in table.items() if k not in ("name", "type", "seeds", "layer")}
    grid = []
    for key, value in fixed.items():
        if not isinstance(value, list) or key not in SWEEPABLE:
            continue
        if not value:
            raise ConfigError(f"{file}: [[runs]] {name} {key}: empty list (a sweep needs at least one value)")
        dup = [v for i, v in enumerate(value) if v in value[:i]]
        if dup:
            raise ConfigError(f"{file}: [[runs]] {name} {key}: value {dup[0]!r} listed twice")
        grid.append((key, value))
    seeds = table.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError(f"{file}: [[runs]] {name} seeds: expected a non-empty list of ints, e.g. [0, 1, 2]")
        bad = [s for s in seeds if not _type_ok(s, int) or s < 0]
        if bad:
            raise ConfigError(f"{file}: [[runs]] {name} seeds: every seed must be an int >= 0, got {bad[0]!r}")
        dup = [s for i, s in enumerate(seeds) if s in seeds[:i]]
        if dup:
            raise ConfigError(f"{file}: [[runs]] {name} seeds: seed {dup[0]!r} listed twice")
    layers = table.get("layer")
    if layers is not None:
        listed = layers if isinstance(layers, list) else [layers]
        problem = "empty list" if not listed else _layer_list(listed)
        if problem:
            raise ConfigError(f"{file}: [[runs]] {name} layer: {problem} (a harvested block, or a list of them)")
    out = []
    for point in itertools.product(*[[(k, v) for v in vs] for k, vs in grid]):
        run_name = name + "".join(f"-{k}{_name_value(v)}" for k, v in point)
        for layer in layers if isinstance(layers, list) else [layers]:
            layer_name = run_name + (f"-L{layer}" if isinstance(layers, list) else "")
            for seed in seeds if seeds is not None else [None]:
                overrides = {**fixed, **dict(point)}
                if layer is not None:
                    overrides["layer"] = layer
                if seed is not None:
                    overrides["seed"] = seed
                out.append((layer_name + (f"-s{seed}" if seed is not None else ""), overrides))
    return out


def _build_runs(
    raw: Any, file: Path, train: TrainConfig, ortho: OrthoConfig, layers: tuple[int, ...] = (None,)
) -> list[RunConfig]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{file}: [[runs]]: expected at least one [[runs]] table")
    runs, seen = [], {}
    for i, table in enumerate(raw):
        where = f"[[runs]] #{i + 1}"
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: {where}: expected a table")
        name, run_type = table.get("name"), table.get("type")
        for key in ("name", "type"):
            if isinstance(table.get(key), list):
                raise ConfigError(
                    f"{file}: {where} {key}: cannot be a list (one {key} per [[runs]] table; "
                    f"list values of [train] keys and `seeds` expand into runs)"
                )
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{file}: {where} name: required, a string")
        if _safe_name(name):
            raise ConfigError(f"{file}: {where} name: {_safe_name(name)}")
        if name in seen.values():
            raise ConfigError(f"{file}: {where} name: duplicate run name {name!r}")
        variant = variants.VARIANTS.get(run_type) if isinstance(run_type, str) else None
        if variant is None:
            raise ConfigError(
                f"{file}: [[runs]] {name} type: must be one of {', '.join(variants.VARIANTS)}, got {run_type!r}"
            )
        for key in table:
            if key in ("name", "type", "seeds", "layer"):
                continue
            if key in ORTHO_KEYS and key not in variant.ortho_keys:
                raise ConfigError(
                    f"{file}: [[runs]] {name} {key}: type {run_type!r} does not read [train.ortho] "
                    f"{key} (its keys: {', '.join(variant.ortho_keys) or 'none'})"
                )
            if key not in RUN_OVERRIDABLE:
                why = (
                    "shared by all runs (one data stream); a run's SAE init seed is `seeds = [...]`"
                    if key == "seed"
                    else "shared by all runs (one data stream)"
                    if key in STREAM_KEYS
                    else f"unknown key ({REMOVED_WHY})"
                    if key in REMOVED_ORTHO_KEYS
                    else "unknown key"
                )
                raise ConfigError(f"{file}: [[runs]] {name} {key}: {why}")
        expanded = expand_run_table(table, file, where)
        for run_name, keys in expanded:
            if _safe_name(run_name):  # a grid value ends up in the name: "-activationa b" is no folder
                raise ConfigError(f"{file}: [[runs]] {name} name: expanded run {_safe_name(run_name)}")
            if run_name in seen:
                raise ConfigError(
                    f"{file}: [[runs]] {name} name: expanded run {run_name!r} collides with "
                    f"the run of the same name from [[runs]] {seen[run_name]}"
                )
            seen[run_name] = name
            keys = dict(keys)
            layer = keys.pop("layer", None)
            if layer is None and len(layers) > 1:
                raise ConfigError(
                    f"{file}: [[runs]] {name} layer: [harvest] layers holds several blocks "
                    f"({', '.join(map(str, layers))}): name the one this run trains on, or a list"
                )
            if layer is not None and layer not in layers:
                raise ConfigError(
                    f"{file}: [[runs]] {name} layer: {layer} is not harvested ([harvest] "
                    f"{'layers' if len(layers) > 1 else 'layer'}: {', '.join(map(str, layers))})"
                )
            layer = layers[0] if layer is None else layer
            # The run's sections, validated as the tables they would be.
            run_train = _build(
                TrainConfig,
                {**_asdict(train), **{k: v for k, v in keys.items() if k in TRAIN_KEYS}},
                f"[[runs]] {run_name}",
                file,
            )
            run_ortho = _build(
                OrthoConfig,
                {**_asdict(ortho), **{k: v for k, v in keys.items() if k in ORTHO_KEYS}},
                f"[[runs]] {run_name}",
                file,
            )
            run = RunConfig(name=run_name, type=run_type, train=run_train, ortho=run_ortho, overrides=keys, layer=layer)
            _check_sparsity(run, keys, file)
            runs.append(run)
    return runs


def _check_sparsity(run: RunConfig, overrides: dict, file: Path) -> None:
    """activation / k / target_l0 must agree within a run; adam_betas as [train]'s; the rms form's
    own [train.ortho] key (gram_dtype) only with it."""
    tr, where = run.train, f"{file}: [[runs]] {run.name}"
    if len(tr.adam_betas) != 2 or not all(_type_ok(b, float) and 0 <= b < 1 for b in tr.adam_betas):
        raise ConfigError(f"{where} adam_betas: expected two numbers in [0, 1) (a list key: not swept)")
    if tr.activation in ("topk", "batchtopk"):
        if tr.k < 1:
            raise ConfigError(f"{where} k: activation {tr.activation!r} needs k >= 1 (active features per token)")
        if tr.k > tr.d_sae:
            raise ConfigError(f"{where} k: {tr.k} is more than d_sae {tr.d_sae}")
        if tr.target_l0:
            raise ConfigError(f'{where} target_l0: only for activation "relu" ({tr.activation} fixes L0 at k)')
    elif "k" in overrides:
        raise ConfigError(f'{where} k: only used with activation "topk" or "batchtopk" (this run is relu)')
    if tr.target_l0 and tr.target_l0 > tr.d_sae:
        raise ConfigError(f"{where} target_l0: {tr.target_l0} is more than d_sae {tr.d_sae}")
    o = run.ortho
    if o.alpha_mode != "rms" and o.gram_dtype != "float32":  # the Grams' precision exists only in the rms form
        raise ConfigError(f'{where} gram_dtype: only for alpha_mode "rms" (this run is {o.alpha_mode!r})')


def _asdict(section) -> dict:
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def load_config(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> Config:
    """The validated config of ``path``, with ``pipe --set KEY=VALUE`` overrides ``sets`` applied
    to the TOML first (common/overrides.py), so they pass the same checks as the file's own keys."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: not valid TOML: {e}") from None
    if not sets:
        return _load(file, raw)
    try:
        return dataclasses.replace(_load(file, overrides.apply(raw, sets, file)), sets=tuple(sets))
    except ConfigError as e:
        blamed = [s for s in sets if overrides.blames(str(e), s)]
        if not blamed or "--set" in str(e):
            raise
        raise ConfigError(f"{e} (from --set {blamed[-1]})") from None


def _load(file: Path, raw: dict) -> Config:
    sections = {"model", "harvest", "corpora", "train", "runs", "eval", "log"}
    for key in raw:
        if key not in sections:
            raise ConfigError(f"{file}: [{key}]: unknown section (known: {', '.join(sorted(sections))})")
    for key in ("model", "harvest", "corpora"):
        if key not in raw:
            raise ConfigError(f"{file}: [{key}]: required section is missing")

    model = _build(ModelConfig, raw["model"], "[model]", file)
    harvest = _check_layers(_build(HarvestConfig, raw["harvest"], "[harvest]", file), file)
    if harvest.context_length < 2:
        raise ConfigError(f"{file}: [harvest] context_length: must be >= 2 (BOS + tokens)")
    if not isinstance(raw["corpora"], dict) or not raw["corpora"]:
        raise ConfigError(f"{file}: [corpora]: expected at least one [corpora.<name>] table")
    for name in raw["corpora"]:
        if _safe_name(name):
            raise ConfigError(f"{file}: [corpora.{name}]: {_safe_name(name)}")
    corpora = {
        name: _build(CorpusConfig, table, f"[corpora.{name}]", file, {"name": name})
        for name, table in raw["corpora"].items()
    }
    if not any(c.split == "train" for c in corpora.values()):
        raise ConfigError(f'{file}: [corpora]: no corpus has split = "train"')
    for name, c in corpora.items():
        if c.label_field is not None and not (c.source.startswith("hf:") or c.source.endswith((".jsonl", ".json"))):
            raise ConfigError(
                f"{file}: [corpora.{name}] label_field: {c.source} has no record fields "
                "(hf and .jsonl/.json sources do; embedded:wiki is stratified by topic)"
            )

    train_raw = dict(raw.get("train", {}))
    ortho_raw = train_raw.pop("ortho", {})
    train = _build(TrainConfig, train_raw, "[train]", file)
    ortho = _build(OrthoConfig, ortho_raw, "[train.ortho]", file)
    for name, share in train.mix.items():
        if name not in corpora or corpora[name].split != "train":
            raise ConfigError(f'{file}: [train] mix.{name}: not a corpus with split = "train"')
        if not _type_ok(share, float) or share <= 0:
            raise ConfigError(f"{file}: [train] mix.{name}: must be a number > 0, got {share!r}")
    if len(train.adam_betas) != 2 or not all(_type_ok(b, float) and 0 <= b < 1 for b in train.adam_betas):
        raise ConfigError(f"{file}: [train] adam_betas: expected two numbers in [0, 1)")
    layers = harvest.all_layers  # no [[runs]]: a baseline at every harvested layer
    default_runs = [{"name": "baseline", "type": "baseline", **({"layer": list(layers)} if len(layers) > 1 else {})}]
    runs = _build_runs(raw.get("runs", default_runs), file, train, ortho, layers)
    roles = {c.role for c in corpora.values() if c.split == "train"}
    for run in runs:
        if run.grouped and roles != {"forget", "retain"}:
            raise ConfigError(
                f'{file}: [[runs]] {run.name} type: "{run.type}" groups features by their forget '
                f'vs retain activation mass, so [corpora] needs split = "train" corpora of both '
                f"roles (have: {', '.join(sorted(roles))})"
            )
    evaluation = _build(EvalConfig, raw.get("eval", {}), "[eval]", file)
    bad_refs = set(evaluation.unlearning.references) - {"forget_share", "diff_of_means"}
    if bad_refs:
        raise ConfigError(
            f"{file}: [eval.unlearning] references: unknown reference {sorted(bad_refs)[0]!r} "
            "(known: forget_share, diff_of_means)"
        )
    bad_modes = set(evaluation.unlearning.modes) - {"mcq", "loss"}
    if bad_modes:
        raise ConfigError(f"{file}: [eval.unlearning] modes: unknown mode {sorted(bad_modes)[0]!r} (known: mcq, loss)")
    _check_probing(evaluation, file)
    conditions = {r.condition for r in runs}
    fsc = evaluation.unlearning.forget_share_condition
    baselines = {r.condition for r in runs if r.variant.baseline}
    if fsc and fsc not in baselines:
        raise ConfigError(
            f"{file}: [eval.unlearning] forget_share_condition: {fsc!r} is not a baseline condition "
            f"of [[runs]] (have: {', '.join(sorted(baselines))})"
        )
    budgets = [budget_key(b) for b in evaluation.unlearning.retain_budgets]
    if evaluation.primary_figure and evaluation.primary_figure not in budgets:
        raise ConfigError(
            f"{file}: [eval] primary_figure: {evaluation.primary_figure!r} is not F(b) of a retain "
            f"budget (have: {', '.join(budgets)})"
        )
    for pair in evaluation.primary_pairs:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(c in conditions for c in pair) and pair[0] != pair[1]
        ):
            raise ConfigError(
                f"{file}: [eval] primary_pairs: expected pairs of two different conditions of [[runs]], "
                f"got {pair!r} (have: {', '.join(sorted(conditions))})"
            )
    if evaluation.spread.condition and evaluation.spread.condition not in conditions:
        raise ConfigError(
            f"{file}: [eval.spread] condition: {evaluation.spread.condition!r} is not a condition of "
            f"[[runs]] (have: {', '.join(sorted(conditions))})"
        )
    log = _build(LogConfig, raw.get("log", {}), "[log]", file)
    if log.tracker != "none" and importlib.util.find_spec(log.tracker) is None:
        raise ConfigError(
            f"{file}: [log] tracker: {log.tracker!r} is not installed: "
            f"pip install 'orthosae[{log.tracker}]' (or set tracker = \"none\")"
        )
    return Config(
        path=file,
        model=model,
        harvest=harvest,
        corpora=corpora,
        train=train,
        ortho=ortho,
        runs=runs,
        eval=evaluation,
        log=log,
    )


def _check_layers(h: HarvestConfig, file: Path) -> HarvestConfig:
    """`layer` or `layers`, not both; several layers need `{layer}` in the store path. One layer (either
    form) comes back as `layer = N` with the store path filled in, so every stage reads it as before."""
    if h.layer is not None and h.layers:
        raise ConfigError(f"{file}: [harvest] layers: give `layer = N` or `layers = [...]`, not both")
    if h.layer is None and not h.layers:
        raise ConfigError(f"{file}: [harvest] layer: required key is missing (or `layers = [...]`)")
    if len(h.all_layers) > 1:
        if "{layer}" not in h.store:
            raise ConfigError(
                f"{file}: [harvest] store: several layers are written to one store each: put "
                f'{{layer}} in the path, e.g. "stores/model-L{{layer}}.zarr", got {h.store!r}'
            )
        return h
    layer = h.all_layers[0]
    return dataclasses.replace(h, layer=layer, layers=[], store=h.store_for(layer))


def _check_probing(ev: EvalConfig, file: Path) -> None:
    """Dataset names and the families' agreement, before any model loads."""
    for name in ev.probing.datasets:
        kind, _, rest = str(name).partition(":")
        if name not in PROBING_DATASETS and not (kind in ("hf", "file") and rest):
            raise ConfigError(
                f"{file}: [eval.probing] datasets: unknown dataset {name!r} (known: "
                f"{', '.join(PROBING_DATASETS)}, hf:<path>, file:<path.jsonl>)"
            )
    if ev.tpp.enabled and ev.tpp.dataset not in ev.probing.datasets:
        raise ConfigError(
            f"{file}: [eval.tpp] dataset: {ev.tpp.dataset!r} is not one of [eval.probing] "
            f"datasets (TPP reuses its texts and probes)"
        )
    _check_scr(ev.scr, file)
    if "{word}" not in ev.absorption.prompt_template:
        raise ConfigError(f"{file}: [eval.absorption] prompt_template: needs a {{word}} placeholder")


def _check_scr(sc: ScrConfig, file: Path) -> None:
    """SCR's topic pairs and languages exist in the wiki wheel (checked even when off: a typo waits)."""
    where = f"{file}: [eval.scr]"
    langs = sc.languages
    if len(langs) != 2 or len(set(langs)) != 2 or not all(isinstance(v, str) and v in SCR_LANGUAGES for v in langs):
        raise ConfigError(f"{where} languages: expected two different of {', '.join(SCR_LANGUAGES)}, got {langs!r}")
    if not sc.topic_pairs:
        raise ConfigError(f"{where} topic_pairs: expected at least one [topic 1, topic 2] pair")
    for pair in sc.topic_pairs:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair) and pair[0] != pair[1]
        ):
            raise ConfigError(f"{where} topic_pairs: expected pairs of two different topic names, got {pair!r}")
        for t in pair:
            missing = [lang for lang in langs if lang != "en" and lang not in SCR_TOPIC_NAMES.get(t, {})]
            if t not in SCR_TOPIC_NAMES or missing:
                known = [k for k, v in SCR_TOPIC_NAMES.items() if all(lang == "en" or lang in v for lang in langs)]
                raise ConfigError(
                    f"{where} topic_pairs: topic {t!r} has no counterpart in the "
                    f"{'/'.join(langs)} extracts (known: {', '.join(known)})"
                )


def check_model_fits(cfg: Config, n_layers: int, d_model: int) -> None:
    """Checks that need the model's shape; called before any store is opened for writing."""
    for layer in cfg.harvest.all_layers:
        if layer >= n_layers:
            key = "layers" if cfg.harvest.layers else "layer"
            raise ConfigError(
                f"{cfg.path}: [harvest] {key}: {layer} is beyond the model's {n_layers} blocks (0..{n_layers - 1})"
            )
    if cfg.model.d_model is not None and cfg.model.d_model != d_model:
        raise ConfigError(
            f"{cfg.path}: [model] d_model: config says {cfg.model.d_model}, model {cfg.model.id} has {d_model}"
        )


def documented_keys() -> dict[str, list[tuple[str, str, Any]]]:
    """(key, doc, default) per section: the README's config reference is generated from this."""
    out = {}
    for section, cls in [
        ("model", ModelConfig),
        ("harvest", HarvestConfig),
        ("corpora.<name>", CorpusConfig),
        ("train", TrainConfig),
        ("train.ortho", OrthoConfig),
        ("eval", EvalConfig),
        ("eval.unlearning", UnlearningConfig),
        ("eval.probing", ProbingConfig),
        ("eval.tpp", TppConfig),
        ("eval.scr", ScrConfig),
        ("eval.absorption", AbsorptionConfig),
        ("eval.spread", SpreadConfig),
        ("log", LogConfig),
    ]:
        rows = []
        for f in dataclasses.fields(cls):
            if f.name == "name" or dataclasses.is_dataclass(
                f.default_factory if f.default_factory is not dataclasses.MISSING else None
            ):
                continue
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else f.default_factory()
                if f.default_factory is not dataclasses.MISSING
                else "required"
            )
            rows.append((f.name, f.metadata.get("doc", ""), default))
        out[section] = rows
    return out


def config_reference() -> str:
    """The README's config reference tables (a test keeps the README equal to this)."""
    blocks = []
    for section, rows in documented_keys().items():
        lines = [f"**[{section}]**", "", "| key | default | meaning |", "|---|---|---|"]
        lines += [
            f"| `{key}` | {'required' if default == 'required' else f'`{default!r}`'} | {doc} |"
            for key, doc, default in rows
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
