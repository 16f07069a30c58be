"""SAEBench first-letter feature absorption (after Chanin et al.), on prompt residuals cached per store.

Matched against sae_bench 0.6.0 ``evals/absorption`` (cross-checked in tests/test_eval_absorption.py):

1. Words (``vocab.get_alpha_tokens``): the tokenizer's own tokens that are letters only (one leading
   space allowed), sorted, then a seeded sample of ``[eval.absorption] words`` (0 = all), shuffled
   and split ``1 − test_fraction`` / ``test_fraction`` (``create_dataset_probe_training``).
2. Prompts (``prompting.create_icl_prompt``): ``icl_examples`` other words of the same split, each
   as ``"{word} has the first letter: W"``, one per line, then the word's own ``"{word} has the
   first letter:"``, with a leading newline. The residual is read at the word's last token
   (SAEBench's ``prompt_token_pos = -6`` counts from the end of a batch padded on the right, which
   lands in padding for every prompt shorter than the batch's longest; we count from each prompt's
   own end, by the template's tokens after ``{word}``). SAEBench seeds none of this (its
   ``random_seed`` is never applied); we seed every draw with ``[eval.absorption] seed``.
3. The LLM probe (``probing.train_linear_probe_for_task``): a 26-way one-vs-rest logistic probe
   on the training words' residuals (BCE with positive weights, Adam 1e-2 decaying to 1e-5 over 50
   epochs, weight decay 1e-4), scored on the test words: F1 per letter at logit > 0.
4. k-sparse probes (``k_sparse_probing.train_k_sparse_probes``): an L1-penalised 26-way probe on
   the SAE latents (l1 0.01, 50 epochs); for each letter and k = 1..max_k the k latents of largest
   weight, refitted with sklearn (balanced, max_iter 500); F1 on the test words.
5. Split features (``add_feature_splits_to_metrics_df``): k grows while F1 rises by more than
   ``f1_jump``; the last k's latents are the letter's main latents.
6. Absorption (``FeatureAbsorptionCalculator.calculate_absorption``) on the probe's true positives
   among the test words (probe logit > 0): latent projections ``f_i · cos(probe, W_dec[i])``; the
   absorption fraction and full absorption exactly as SAEBench computes them, on the same cached
   residual (SAEBench re-prompts those words with fresh ICL examples and runs the model again).
7. Aggregate (``main._aggregate_results_df``): per letter, Σ absorption fraction / true positives,
   full absorptions / true positives, and the number of split latents; means over the letters whose
   probe F1 exceeds ``min_probe_f1``, and only when at least ``min_letters`` letters do.
The SAE is evaluated with unit-norm decoder rows (norms folded into the encoder), as SAEBench's are.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

LETTERS = "abcdefghijklmnopqrstuvwxyz"
EPS = 1e-8
FULL_ABSORPTION_PROBE_COS = 0.025  # SAEBench feature_absorption.py thresholds
FRACTION_PROBE_COS = 0.1
PROJECTION_PROPORTION = 0.4
MAX_ABSORBING_LATENTS = 3
TOPK_FEATS = 10


# ---- words and prompts ----


def alpha_words(tokenizer) -> list[str]:
    """SAEBench ``get_alpha_tokens``: decoded vocabulary entries made of ASCII letters only (one
    leading space allowed), sorted and de-duplicated."""
    out = set()
    for token in tokenizer.get_vocab():
        word = tokenizer.convert_tokens_to_string([token])
        if token.startswith("▁") and not word.startswith(" "):
            word = " " + word  # SAEBench: some tokenizers drop the leading space of "▁" tokens
        body = word[1:] if word.startswith(" ") else word
        if body and all(("a" <= ch <= "z") or ("A" <= ch <= "Z") for ch in body):
            out.add(word)
    return sorted(out)


def first_letter(word: str) -> str:
    """SAEBench ``first_letter``: " " + the first alphabetic character, upper-cased."""
    return " " + [c for c in word.strip() if c.isalpha()][0].upper()


def icl_prompt(word: str, examples: list[str], template: str, n_examples: int, rng: random.Random) -> str:
    """SAEBench ``create_icl_prompt`` (separator "\\n", prepended; the word never among its examples)."""
    pool = [e for e in examples if e != word]
    shots = rng.sample(pool, min(n_examples, len(pool)))
    lines = [template.format(word=e) + first_letter(e) for e in shots]
    return "\n" + "\n".join(lines + [template.format(word=word)])


@dataclass
class PromptSet:
    words: list[str]
    letters: Tensor  # [n] 0..25
    acts: Tensor  # [n, d_model] residual at the word's last token (bfloat16)


def word_split(tokenizer, n_words: int, test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = alpha_words(tokenizer)
    if n_words and n_words < len(vocab):
        vocab = rng.sample(vocab, n_words)
    rng.shuffle(vocab)
    cut = int(len(vocab) * (1 - test_fraction))
    return vocab[:cut], vocab[cut:]


def prompt_ids(tokenizer, prompts: list[str], template: str) -> tuple[Tensor, Tensor, Tensor, list[bool]]:
    """(ids [n, T] right-padded, lengths, word positions, usable): BOS + prompt; the position is the
    prompt's own length minus the template's tokens after ``{word}`` (unusable when the prompt's
    tail does not tokenize as the template's)."""
    suffix = template.split("{word}", 1)[1]
    tail = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    enc = tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = [bos + list(e) for e in enc]
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    lengths = torch.tensor([len(r) for r in rows])
    usable = [not tail or r[-len(tail) :] == tail for r in rows]
    positions = lengths - len(tail) - 1
    return ids, lengths, positions, usable


def prompt_sets(
    model,
    tokenizer,
    layer: int,
    *,
    words: int,
    test_fraction: float,
    icl_examples: int,
    template: str,
    seed: int,
    batch_tokens: int,
    cache_dir,
    store_meta: dict,
    progress=None,
) -> tuple[PromptSet, PromptSet, dict, bool]:
    """(train, test, stats, cache hit): the prompts' residuals at the word, computed once per store."""
    from orthosae.eval.probe_data import cache_path, cached, residuals

    recipe = {
        "dataset": "first_letter",
        "words": words,
        "test_fraction": test_fraction,
        "icl": icl_examples,
        "template": template,
        "seed": seed,
        "format": 1,
    }

    def build() -> dict:
        rng = random.Random(seed + 1)
        train_words, test_words = word_split(tokenizer, words, test_fraction, seed)
        out = {"vocab_size": len(alpha_words(tokenizer))}
        for split, ws in (("train", train_words), ("test", test_words)):
            prompts = [icl_prompt(w, ws, template, icl_examples, rng) for w in ws]
            ids, lengths, positions, usable = prompt_ids(tokenizer, prompts, template)
            keep = torch.tensor(usable, dtype=torch.bool)
            acts = residuals(model, layer, ids[keep], lengths[keep], batch_tokens, progress, positions=positions[keep])
            kept = [w for w, u in zip(ws, usable) if u]
            out[split] = {
                "words": kept,
                "letters": torch.tensor([LETTERS.index(first_letter(w).strip().lower()) for w in kept]),
                "acts": acts,
            }
            out[f"{split}_dropped"] = len(ws) - len(kept)
        return out

    value, hit = cached(cache_path(cache_dir, "absorption", store_meta, recipe), build)
    stats = {
        "alphabetic_vocab": value["vocab_size"],
        "train_words": len(value["train"]["words"]),
        "test_words": len(value["test"]["words"]),
        "dropped_words": value["train_dropped"] + value["test_dropped"],
    }
    return PromptSet(**value["train"]), PromptSet(**value["test"]), stats, hit


# ---- probes ----


def train_multi_probe(
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 50,
    lr: float = 1e-2,
    end_lr: float = 1e-5,
    weight_decay: float = 1e-6,
    batch_size: int = 4096,
    l1: float = 0.0,
    seed: int = 0,
) -> nn.Linear:
    """SAEBench ``train_multi_probe``: one-vs-rest logistic probes ``[n_classes, d]`` trained jointly
    (BCE with pos_weight = negatives / positives, Adam, exponential lr decay; optional L1 on weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = nn.Linear(x.shape[1], y.shape[1])
    pos = y.sum(0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(len(y) - pos) / pos.clamp_min(1))
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=math.exp(math.log(end_lr / lr) / epochs))
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            for s in range(0, len(x), batch_size):
                b = order[s : s + batch_size]
                loss = loss_fn(probe(x[b]), y[b])
                if l1:
                    loss = loss + l1 * probe.weight.abs().sum(-1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
    return probe.requires_grad_(False)


def f1(y: np.ndarray, pred: np.ndarray) -> float:
    """sklearn ``f1_score`` (binary; 0 when there is nothing to score)."""
    tp = float((y & pred).sum())
    denom = 2 * tp + float((~y & pred).sum()) + float((y & ~pred).sum())
    return 2 * tp / denom if denom else 0.0


@dataclass
class LetterProbe:
    """The LLM probe and its per-letter F1 on the test words (SAE-independent: once per store)."""

    weight: Tensor  # [26, d]
    bias: Tensor  # [26]
    f1: dict[str, float]
    test_scores: Tensor  # [n_test, 26]


def letter_probe(train: PromptSet, test: PromptSet, seed: int) -> LetterProbe:
    x = train.acts.float()
    y = torch.nn.functional.one_hot(train.letters, 26).float()
    probe = train_multi_probe(x, y, epochs=50, lr=1e-2, weight_decay=1e-4, seed=seed)
    scores = probe(test.acts.float())
    truth = test.letters.numpy()
    f1s = {
        L: f1(truth == i, (scores[:, i] > 0).numpy())
        for i, L in enumerate(LETTERS)
        if (truth == i).any() and (train.letters == i).any()
    }
    return LetterProbe(probe.weight.detach().clone(), probe.bias.detach().clone(), f1s, scores.detach())


def k_sparse_probes(
    f_train: Tensor, letters: Tensor, max_k: int, seed: int
) -> dict[int, dict[int, tuple[Tensor, Tensor, float]]]:
    """SAEBench ``train_k_sparse_probes`` on precomputed latents: {k: {letter: (latents, coef, bias)}}."""
    from sklearn.linear_model import LogisticRegression

    y = torch.nn.functional.one_hot(letters, 26).float()
    l1_probe = train_multi_probe(f_train.float(), y, epochs=50, lr=1e-2, weight_decay=1e-6, l1=0.01, seed=seed)
    out: dict[int, dict[int, tuple[Tensor, Tensor, float]]] = {}
    target = letters.numpy()
    for k in range(1, max_k + 1):
        out[k] = {}
        for i in range(26):
            if not (target == i).any():
                continue
            idx = l1_probe.weight[i].topk(k).indices
            sk = LogisticRegression(max_iter=500, class_weight="balanced", random_state=seed)
            sk.fit(f_train[:, idx].float().numpy(), (target == i).astype(np.int64))
            out[k][i] = (idx, torch.tensor(sk.coef_[0], dtype=torch.float32), float(sk.intercept_[0]))
    return out


def split_features(f1_by_k: dict[int, float], feats_by_k: dict[int, list[int]], f1_jump: float) -> list[int]:
    """SAEBench ``add_feature_splits_to_metrics_df``: grow k while F1 beats the best so far by more
    than ``f1_jump``; the latents of the last such k."""
    best, feats = -100.0, []
    for k in sorted(f1_by_k):
        if f1_by_k[k] > best + f1_jump:
            best, feats = f1_by_k[k], feats_by_k[k]
        else:
            break
    return feats


# ---- absorption of one word ----


def word_absorption(
    sae_acts: Tensor, act_probe_proj: float, cos_sims: Tensor, main_ids: list[int]
) -> tuple[float, bool]:
    """SAEBench ``calculate_absorption`` for one word: (absorption fraction, full absorption)."""
    proj = sae_acts.float() * cos_sims
    main_proj = float(proj[main_ids].sum()) if main_ids else 0.0
    absorbers = torch.ones(len(proj), dtype=torch.bool)
    absorbers[main_ids] = False
    absorbers &= (cos_sims >= FRACTION_PROBE_COS) & (proj > 0)
    cand = proj[absorbers]
    top_total = float(cand.topk(min(MAX_ABSORBING_LATENTS, cand.numel())).values.sum()) if cand.numel() else 0.0
    proportion = (
        top_total / act_probe_proj if act_probe_proj else math.copysign(math.inf, top_total) if top_total else math.nan
    )
    if main_proj >= act_probe_proj or not proportion >= PROJECTION_PROPORTION:
        fraction = 0.0
    elif main_proj <= 0.0:
        fraction = 1.0
    else:
        absorbed = min(top_total, act_probe_proj - main_proj)
        fraction = float(np.clip(absorbed / (absorbed + main_proj), 0.0, 1.0))
    # SAEBench divides by the probe projection here (and raises at exactly 0): 0 is not absorption
    full = all(float(sae_acts[i]) < EPS for i in main_ids) and act_probe_proj > 0
    if full:
        top = int(proj.topk(min(TOPK_FEATS, len(proj))).indices[0])
        full = (
            float(cos_sims[top]) >= FULL_ABSORPTION_PROBE_COS
            and float(proj[top]) / act_probe_proj >= PROJECTION_PROPORTION
        )
    return fraction, bool(full)


@torch.no_grad()
def run_absorption(
    sae,
    train: PromptSet,
    test: PromptSet,
    probe: LetterProbe,
    *,
    max_k: int,
    f1_jump: float,
    min_probe_f1: float,
    min_letters: int,
    seed: int,
    batch_rows: int = 4096,
) -> dict:
    """Absorption of one SAE (decoder rows at unit norm) on the cached prompt residuals."""
    device, dtype = sae.W_dec.device, sae.W_dec.dtype

    def encode(x: Tensor) -> Tensor:
        return torch.cat(
            [sae.encode(x[s : s + batch_rows].to(device, dtype)).float().cpu() for s in range(0, len(x), batch_rows)]
        )

    f_train, f_test = encode(train.acts.float()), encode(test.acts.float())
    probes = k_sparse_probes(f_train, train.letters, max_k, seed)
    truth = test.letters.numpy()
    W_dec = sae.W_dec.float().cpu()
    dec_unit = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    letters = {}
    for i, L in enumerate(LETTERS):
        if L not in probe.f1 or i not in probes[1]:
            continue
        f1_by_k, feats_by_k = {}, {}
        for k in range(1, max_k + 1):
            idx, coef, bias = probes[k][i]
            f1_by_k[k] = f1(truth == i, ((f_test[:, idx] @ coef + bias) > 0).numpy())
            feats_by_k[k] = idx.tolist()
        main = split_features(f1_by_k, feats_by_k, f1_jump)
        unit = probe.weight[i] / probe.weight[i].norm()
        cos = dec_unit @ unit
        tp = [j for j in range(len(truth)) if truth[j] == i and probe.test_scores[j, i] > 0]
        fractions, full = [], []
        for j in tp:
            fr, fu = word_absorption(f_test[j], float(test.acts[j].float() @ unit), cos, main)
            fractions.append(fr)
            full.append(fu)
        letters[L] = {
            "probe_f1": probe.f1[L],
            "sparse_f1_by_k": f1_by_k,
            "split_latents": main,
            "num_split_features": len(main),
            "num_probe_true_positives": len(tp),
            "mean_absorption_fraction": float(np.sum(fractions) / len(tp)) if tp else math.nan,
            "full_absorption_rate": float(np.sum(full) / len(tp)) if tp else math.nan,
            "num_full_absorption": int(np.sum(full)),
            "absorbing_latents": _absorbers(f_test, tp, cos, main),
        }
    return aggregate(letters, min_probe_f1, min_letters)


def _absorbers(f_test: Tensor, tp: list[int], cos: Tensor, main: list[int]) -> list[int]:
    """The latent with the largest probe projection on each true positive where no main latent
    fires (the candidates the browser shows), most frequent first."""
    counts: dict[int, int] = {}
    for j in tp:
        if main and any(float(f_test[j, m]) >= EPS for m in main):
            continue
        proj = f_test[j] * cos
        top = int(proj.argmax())
        if float(proj[top]) > 0:
            counts[top] = counts.get(top, 0) + 1
    return [k for k, _ in sorted(counts.items(), key=lambda kv: -kv[1])][:5]


def aggregate(letters: dict[str, dict], min_probe_f1: float, min_letters: int) -> dict:
    """SAEBench's means over the letters whose probe F1 exceeds the threshold (and that have true
    positives), or nan with the reason when fewer than ``min_letters`` pass."""
    passing = [L for L, r in letters.items() if r["probe_f1"] > min_probe_f1 and r["num_probe_true_positives"] > 0]
    out = {
        "letters": letters,
        "passing_letters": "".join(passing),
        "min_probe_f1": min_probe_f1,
        "min_letters": min_letters,
    }
    if len(passing) < max(min_letters, 1):
        out.update(
            mean_absorption_fraction_score=math.nan,
            mean_full_absorption_score=math.nan,
            mean_num_split_features=math.nan,
            not_scored=f"{len(passing)} letter(s) pass probe F1 > {min_probe_f1}, fewer than {min_letters}",
        )
        return out
    out.update(
        mean_absorption_fraction_score=float(np.mean([letters[L]["mean_absorption_fraction"] for L in passing])),
        mean_full_absorption_score=float(np.mean([letters[L]["full_absorption_rate"] for L in passing])),
        mean_num_split_features=float(np.mean([letters[L]["num_split_features"] for L in passing])),
    )
    return out
