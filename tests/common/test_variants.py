"""common/variants.py: the one table of SAE variants, and what config validation reads from it."""

from __future__ import annotations

import dataclasses

import pytest

from orthosae.common import variants
from orthosae.common.config import ORTHO_KEYS, OrthoConfig, RunConfig
from orthosae.common.variants import GROUPED_ARCH, Variant
from tests.common.test_config import TWO_ROLES, error_of


def test_the_shipped_table():
    """Each variant's answers, written out: the baseline is the frontier's curve and SAELens' own
    architecture; fixed adds L_ortho (its form's keys); adaptive adds learned groups and their keys."""
    table = {
        v.name: (v.has_ortho, v.grouped, v.baseline, v.architecture("relu"), v.architecture("batchtopk"))
        for v in variants.VARIANTS.values()
    }
    assert table == {
        "baseline": (False, False, True, "standard", "jumprelu"),
        "fixed": (True, False, False, "standard", "jumprelu"),
        "adaptive": (True, True, False, GROUPED_ARCH, GROUPED_ARCH),
    }
    assert variants.VARIANTS["baseline"].ortho_keys == ()
    assert "tau" not in variants.VARIANTS["fixed"].ortho_keys and "alpha" in variants.VARIANTS["fixed"].ortho_keys
    assert set(variants.VARIANTS["adaptive"].ortho_keys) == ORTHO_KEYS


def test_every_ortho_key_has_one_reader_class():
    """The form's keys and the grouping keys are [train.ortho], each once: a new key must be placed."""
    keys = variants.ORTHO_FORM_KEYS + variants.GROUPING_KEYS
    assert len(keys) == len(set(keys)) and set(keys) == {f.name for f in dataclasses.fields(OrthoConfig)}


def test_of_answers_other_types_as_no_variant():
    """eval reads types from reports: a reference's "reference" or a missing type is no variant."""
    for other in ("reference", None, 3):
        v = variants.of(other)
        assert v is variants.OTHER and (v.has_ortho, v.grouped, v.baseline, v.ortho_keys) == (False, False, False, ())
    assert variants.of("fixed") is variants.VARIANTS["fixed"]


def test_register_is_idempotent_and_refuses_a_second_declaration(monkeypatch):
    monkeypatch.setattr(variants, "VARIANTS", dict(variants.VARIANTS))
    again = dataclasses.replace(variants.VARIANTS["fixed"])
    assert variants.register(again) is again  # the same declaration twice: nothing changes
    with pytest.raises(ValueError, match="'fixed' is already registered"):
        variants.register(dataclasses.replace(again, grouped=True))
    with pytest.raises(ValueError, match="grouped needs has_ortho"):
        variants.register(Variant(name="odd", sae_class="m:C", has_ortho=False, grouped=True))


def test_run_config_reads_the_table():
    assert (RunConfig.of("fixed").has_ortho, RunConfig.of("fixed").grouped) == (True, False)
    assert (RunConfig.of("adaptive").has_ortho, RunConfig.of("adaptive").grouped) == (True, True)
    with pytest.raises(
        ValueError, match="run x type: unknown SAE variant 'magic' \\(known: baseline, fixed, adaptive\\)"
    ):
        _ = RunConfig.of("magic", "x").has_ortho


@pytest.mark.parametrize(
    "kind,key,reads",
    [
        ("baseline", "alpha = 0.1", "none"),
        ("fixed", "tau = 0.1", ", ".join(variants.ORTHO_FORM_KEYS)),
        ("fixed", "regroup_every = [5, 10]", ", ".join(variants.ORTHO_FORM_KEYS)),
    ],
)
def test_a_run_may_set_only_the_ortho_keys_its_variant_reads(tmp_path, kind, key, reads):
    msg = error_of(tmp_path, TWO_ROLES + f'[[runs]]\nname = "x"\ntype = "{kind}"\n{key}\n')
    name = key.split(" ")[0]
    assert msg.endswith(f"[[runs]] x {name}: type '{kind}' does not read [train.ortho] {name} (its keys: {reads})"), msg
