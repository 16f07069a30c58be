"""eval.corpora: the report's Corpora section from the store's records (composition or none)."""

from types import SimpleNamespace

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
    def corpus(role, split, comp):
        return SimpleNamespace(role=role, split=split, n_rows=56789, n_contexts=99, source="x", composition=comp)

    return SimpleNamespace(
        corpora=lambda: {"wiki": corpus("retain", "train", COMP), "old": corpus("forget", "heldout", None)}
    )


def test_section_holds_each_corpus_as_recorded_and_what_frequencies_counted():
    freq = describe(0, 0, {"forget": 10, "retain": 2000})
    section = corpora_json(_reader(), freq)
    assert section["groups"]["wiki"] == {
        "role": "retain",
        "split": "train",
        "source": "x",
        "tokens": 56789,
        "contexts": 99,
        "composition": COMP,
    }
    assert section["groups"]["old"]["composition"] is None and section["feature_frequencies"] == freq
    md = corpora_markdown(section)
    assert (
        "| wiki | retain | train | 56,789 | 1,234 | stratified by topic (seed 3) | Arts 1,000 / 50,000, People 234 / 6,789 |"
        in md
    )
    assert "| old | forget | heldout | 56,789 | ? | order and composition not recorded" in md
    assert "rows counted: forget 10, retain 2,000" in md and "every row of the training corpora" in md
    assert "Feature frequencies" not in corpora_markdown(corpora_json(_reader(), None))
