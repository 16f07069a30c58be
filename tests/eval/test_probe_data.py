"""eval.probe_data: the probing texts, their tokenization and the embedded datasets."""

from __future__ import annotations

import json

import pytest
import torch

from orthosae.eval.probe_data import MMLU_CATEGORY, class_texts, masked_mean, tokenize


def test_tokenize_pads_right_and_masks_specials(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, mask = tokenize(["ab", "abcdef"], tok, 5)
    assert ids[0, 0] == tok.bos_token_id and ids[0, 3:].tolist() == [tok.pad_token_id] * 2
    assert mask.tolist() == [[False, True, True, False, False], [False, True, True, True, True]]
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    torch.testing.assert_close(masked_mean(x, mask)[0], x[0, 1:3].mean(0))


def test_embedded_datasets_are_heldout_and_categorised(tmp_path):
    from orthosae.common.corpora import is_heldout

    train, test = class_texts("embedded:wiki_topics", 20, 10, seed=1, heldout_fraction=0.1)
    assert len(train) == 5 and all(len(v) == 20 for v in train.values()) and all(len(v) == 10 for v in test.values())
    assert all(is_heldout(t, 0.1) for v in (*train.values(), *test.values()) for t in v)
    assert not set(train["People"]) & set(test["People"])
    again, _ = class_texts("embedded:wiki_topics", 20, 10, seed=1, heldout_fraction=0.1)
    assert again == train
    assert len(set(MMLU_CATEGORY.values())) == 4 and len(MMLU_CATEGORY) == 57
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(10)))
    tr, te = class_texts(f"file:{p}", 3, 2, seed=0, heldout_fraction=0.1)
    assert sorted(tr) == ["0", "1"] and all(len(v) == 3 for v in tr.values())
    from orthosae.eval.probe_data import ProbeDataError

    with pytest.raises(ProbeDataError, match="class '0' has 5 texts"):
        class_texts(f"file:{p}", 4, 2, seed=0, heldout_fraction=0.1)
