"""eval.corpora: the report's Corpora section from the store's records (composition or none)."""

from types import SimpleNamespace

from orthosae.common.store import CorpusPlan
from orthosae.eval.corpora import corpora_json, corpora_markdown
from orthosae.eval.frequencies import describe

COMP = {
    "order": "stratified by topic",
    "order_seed": 3,
    "documents": 1234,
    "tokens": 56789,
    "labels": {"Arts": {"documents": 1000, "tokens": 50000}, "People": {"documents": 234, "tokens": 6789}},
}


def _reader():
    def corpus(name, role, split, comp):  # 99 contexts of 574 rows = 56,826 tokens, in 50-context chunks (2)
        return CorpusPlan(
            name, role, split, "x", "f", "t", 99, 575, 50, composition=comp or {}, chunks_done=1, complete=False
        )

    return SimpleNamespace(
        corpora=lambda: {
            "wiki": corpus("wiki", "retain", "train", COMP),
            "old": corpus("old", "forget", "heldout", None),
        }
    )


def test_section_holds_each_corpus_as_recorded_and_what_frequencies_counted():
    freq = describe(0, 0, {"forget": 10, "retain": 2000})
    section = corpora_json(_reader(), freq)
    assert section["groups"]["wiki"] == {
        "role": "retain",
        "split": "train",
        "source": "x",
        "tokens": 56826,
        "contexts": 99,
        "chunks_done": 1,
        "chunks": 2,
        "complete": False,
        "composition": COMP,
    }
    assert section["groups"]["old"]["composition"] is None and section["feature_frequencies"] == freq
    md = corpora_markdown(section)
    assert (
        "| wiki | retain | train | 56,826 | 1,234 | stratified by topic (seed 3) | Arts 1,000 / 50,000, People 234 / 6,789 |"
        in md
    )
    assert "| old | forget | heldout | 56,826 | ? | order and composition not recorded" in md
    assert "rows counted: forget 10, retain 2,000" in md and "every row of the training corpora" in md
    assert "Feature frequencies" not in corpora_markdown(corpora_json(_reader(), None))
