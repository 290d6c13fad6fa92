"""Loaders for the shared public outcome data: counts and published numbers from each folder's README.

The data is read in place from ``$TIERWISE_SHARED_DATA`` or ``<repo>/../shared/data`` (never copied into the repo);
the whole module skips, saying so, only when that folder is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

from tests.shared_data import DATA, needs_data
from tierwise.lab.datasets import (
    AGGREGATE_ONLY,
    OutcomeSet,
    fanconi,
    list_sets,
    load_set,
    mot,
    registry,
    routellm,
    routerbench,
    routerdc,
    zellinger,
)
from tierwise.lab.datasets._common import read_json
from tierwise.lab.datasets.splits import hash_split
from tierwise.lab.datasets.tokens import count_tokens

pytestmark = needs_data


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Parse from the source files in every test session (a fresh cache), never from a developer's old cache."""
    old = os.environ.get("TIERWISE_CACHE_DIR")
    os.environ["TIERWISE_CACHE_DIR"] = str(tmp_path_factory.mktemp("lab-cache"))
    yield
    if old is None:
        os.environ.pop("TIERWISE_CACHE_DIR", None)
    else:
        os.environ["TIERWISE_CACHE_DIR"] = old


_LOADED: dict[str, OutcomeSet] = {}


def get(name: str) -> OutcomeSet:
    if name not in _LOADED:
        _LOADED[name] = load_set(name, DATA)
    return _LOADED[name]


def test_registry_covers_every_folder() -> None:
    names = list_sets()
    assert len(names) == len(set(names)) == 32
    for expected in (
        "zellinger/mmlu/llama",
        "mot/date",
        "fanconi/arc_easy/qwen",
        "routellm/mmlu",
        "routerbench/arc_c",
    ):
        assert expected in names
    covered = {m.FOLDER for m in (zellinger, mot, fanconi, routellm, routerbench, routerdc)} | set(
        AGGREGATE_ONLY
    )
    folders = {p.name for p in DATA.iterdir() if p.is_dir()}
    assert folders <= covered, f"folders without a loader or an aggregate-only note: {folders - covered}"
    with pytest.raises(KeyError, match="unknown outcome set"):
        load_set("nope/nothing", DATA)


@pytest.mark.parametrize("name", list_sets())
def test_every_set_is_well_formed(name: str) -> None:
    s = get(name)
    assert s.name == name and len(s) > 0 and s.count("test") > 0
    ids = s.ids()
    assert len(ids) == len(set(ids))
    assert s.count("train") + s.count("test") == len(s)  # every prompt is on exactly one side
    q = s.quality_matrix()
    assert not np.isnan(q).any() and q.min() >= 0 and q.max() <= 1
    c = s.cost_matrix()
    assert np.all(np.isnan(c) | (c >= 0))
    conf = s.confidence_matrix()
    assert np.all(np.isnan(conf) | ((conf >= 0) & (conf <= 1)))
    assert isinstance(s.meta.get("split"), dict) and s.meta["split"]["method"] in ("native", "hash")
    if s.meta["split"]["method"] == "hash":  # the documented recipe reproduces every stored side
        assert all(p.split == hash_split(p.prompt) for p in s.prompts)


def test_cache_round_trip_and_split_stability() -> None:
    for name in ("routellm/gsm8k", "mot/date", "zellinger/gsm8k/llama"):
        first = get(name)
        assert registry.cache_path(name, DATA).exists()
        cached = load_set(name, DATA)  # now read back from the outcome-format cache
        fresh = load_set(name, DATA, use_cache=False)  # parsed again from the source files
        assert cached.prompts == first.prompts == fresh.prompts
        assert {p.id: p.split for p in fresh.prompts} == {p.id: p.split for p in first.prompts}


# ------------------------------------------------------------------------------------------------ zellinger


ZELLINGER_COUNTS = {
    "mmlu": (285, 1531),
    "medmcqa": (300, 1000),
    "triviaqa": (300, 1000),
    "truthfulqa": (300, 517),
}


def test_zellinger_counts_accuracy_and_cost_match_the_authors_summary() -> None:
    summary = read_json(DATA / zellinger.FOLDER / "summary_per_model.json")
    checked = 0
    for rec in summary:
        if "chain" not in rec:
            continue
        s = get(f"zellinger/{rec['benchmark']}/{rec['chain']}")
        rows = [p for p in s.prompts if p.id.startswith(rec["split"] + "-")]
        assert len(rows) == rec["n"]
        for m in rec["models"]:
            acc = np.mean([p.models[m].quality for p in rows])
            total = sum(p.models[m].cost_usd for p in rows)
            assert acc == pytest.approx(rec["accuracy"][m], abs=1e-12)
            assert total == pytest.approx(rec["total_cost_usd"][m], rel=1e-9)
        checked += 1
    assert checked == 18
    for bench, (n_train, n_test) in ZELLINGER_COUNTS.items():
        for chain in zellinger.CHAINS:
            s = get(f"zellinger/{bench}/{chain}")
            assert (s.count("train"), s.count("test")) == (n_train, n_test)
    assert len(get("zellinger/gsm8k/llama")) == 300
    # README: "MMLU llama 1B .425 / 3B .572 / 8B .634 / 70B .815 / 405B .852; gpt-4o-mini .749, gpt-4o .836"
    t = get("zellinger/mmlu/llama").split("test")
    assert [round(t.mean_quality(m), 3) for m in t.models] == [0.425, 0.572, 0.634, 0.815, 0.852]
    t = get("zellinger/mmlu/qwen_oai").split("test")
    assert (round(t.mean_quality("gpt-4o-mini"), 3), round(t.mean_quality("gpt-4o"), 3)) == (0.749, 0.836)


def test_zellinger_confidence_is_exp_of_the_log_prob() -> None:
    s = get("zellinger/mmlu/llama")
    p = s.prompts[s.ids().index("test-0")]
    assert p.models["llama3.2-1b"].confidence == pytest.approx(np.exp(-1.04151666))
    assert p.reference == "A" and p.system is not None and p.models["llama3.1-405b"].latency_ms > 0


# ------------------------------------------------------------------------------------------------------ mot


def test_mot_date_matches_readme_and_paper_recipe() -> None:
    s = get("mot/date")
    assert len(s) == 369 and s.models == ["gpt-3.5-turbo", "gpt-4"]
    assert {len(p.models["gpt-3.5-turbo"].samples) for p in s.prompts} == {14}
    assert {len(p.models["gpt-4"].samples) for p in s.prompts} == {3}
    assert 0.886 <= round(s.mean_quality("gpt-4"), 3) <= 0.894  # README: gpt-4 CoT-SC 0.886-0.894
    assert 0.65 <= s.mean_quality("gpt-3.5-turbo") <= 0.80  # README: gpt-3.5 CoT 0.65-0.74 / PoT 0.72-0.80
    demos = read_json(DATA / mot.FOLDER / "few_shot_prompts.json")["date"]
    p = s.prompts[0]
    assert p.models["gpt-4"].input_tokens == count_tokens(demos["date_CoT1_prompting"])
    weak = p.models["gpt-3.5-turbo"]
    assert weak.cost_usd == pytest.approx((weak.input_tokens * 0.0015 + weak.output_tokens * 0.002) / 1000)
    # The paper's vote cascade (accept the weak majority when its share >= 0.6) matches gpt-4's accuracy at well
    # under half its cost (the paper: ~40% averaged over six datasets).
    q, c, conf = s.quality_matrix(), s.cost_matrix(), s.confidence_matrix()
    accept = conf[:, 0] >= 0.6
    acc = np.where(accept, q[:, 0], q[:, 1]).mean()
    cost = (c[:, 0] + np.where(accept, 0.0, c[:, 1])).sum()
    assert acc >= s.mean_quality("gpt-4") and 0.3 < cost / c[:, 1].sum() < 0.5


# -------------------------------------------------------------------------------------------------- fanconi

FANCONI_README = {
    "fanconi/arc_easy/llama": (0.674, 0.940),
    "fanconi/arc_challenge/llama": (0.519, 0.864),
    "fanconi/medmcqa/llama": (0.405, 0.592),
    "fanconi/arc_easy/qwen": (0.844, 0.960),
    "fanconi/arc_challenge/qwen": (0.695, 0.905),
}


@pytest.mark.parametrize("name", sorted(FANCONI_README))
def test_fanconi_accuracies_match_readme(name: str) -> None:
    s = get(name)
    assert len(s) == 1000
    base, large = s.models
    assert (round(s.mean_quality(base), 3), round(s.mean_quality(large), 3)) == FANCONI_README[name]
    assert s.mean_cost(base) < s.mean_cost(large)  # size-weighted costs: the small model is cheaper
    assert all(p.models[base].confidence is not None for p in s.prompts)


# ------------------------------------------------------------------------------------------------- routellm


def test_routellm_full_sets_match_readme() -> None:
    mmlu = routellm.load("routellm/mmlu", DATA, decontaminate=False)
    assert len(mmlu) == 14042
    assert (
        round(mmlu.mean_quality(routellm.WEAK), 3) == 0.681
        and round(mmlu.mean_quality(routellm.STRONG), 3) == 0.806
    )
    gsm = routellm.load("routellm/gsm8k", DATA, decontaminate=False)
    assert len(gsm) == 1319
    assert (
        round(gsm.mean_quality(routellm.STRONG), 3) == 0.857
        and round(gsm.mean_quality(routellm.WEAK), 3) == 0.638
    )
    mt = routellm.load("routellm/mt_bench", DATA, decontaminate=False)
    assert len(mt) == 80  # 80 questions x 2 turns x 2 models = 320 judgements
    assert (
        round(10 * mt.mean_quality(routellm.STRONG), 2) == 9.23
        and round(10 * mt.mean_quality(routellm.WEAK), 2) == 8.34
    )


def test_routellm_registry_sets_are_decontaminated_like_the_paper() -> None:
    assert [get(f"routellm/{b}").meta["dropped_contaminated"] for b in routellm.BENCHMARKS] == [5, 12, 8]
    assert [len(get(f"routellm/{b}")) for b in routellm.BENCHMARKS] == [14037, 1307, 72]
    for b in routellm.BENCHMARKS:
        s = get(f"routellm/{b}")
        assert s.mean_cost(routellm.STRONG) > 50 * s.mean_cost(routellm.WEAK)  # $24.7 vs $0.24 per 1M tokens


# ---------------------------------------------------------------------------------------------- routerbench


def test_routerbench_counts_and_reference_accuracies() -> None:
    source_rows = {"arc_c": (1039, 445), "mbpp": (299, 128), "winogrande": (887, 380)}
    for task, (n_train, n_test) in source_rows.items():
        s = get(f"routerbench/{task}")
        assert s.meta["rows_in_source"] == {"train": n_train, "test": n_test}
        assert len(s) + len(s.meta["dropped_incomplete"]) == n_train + n_test
        assert len(s.models) == 11
    arc = get("routerbench/arc_c").split("test")
    assert round(arc.mean_quality("gpt-4-1106-preview"), 3) == 0.957  # README: GPT-4 on ARC-C test .957
    wino = get("routerbench/winogrande").split("test")
    assert round(wino.mean_quality("gpt-4-1106-preview"), 3) == 0.855
    # Upstream repeats some sample_ids (on rows with failed calls); ids here carry the row index and stay unique.
    dropped = [x.split("#")[0] for x in get("routerbench/arc_c").meta["dropped_incomplete"]]
    assert len(set(dropped)) < len(dropped)
    assert all("#" in pid for pid in get("routerbench/arc_c").ids())


# ------------------------------------------------------------------------------------------------- routerdc

ROUTERDC_COUNTS = {
    "mmlu": (2000, 4213),
    "gsm8k": (1000, 1319),
    "cmmlu": (2000, 3475),
    "arc_challenge": (820, 352),
    "humaneval": (115, 49),
    "arc_easy": (1663, 713),
    "math_prealgebra": (0, 871),
    "mbpp": (0, 500),
    "ceval": (0, 1346),
    "javascript": (0, 164),
}


@pytest.mark.parametrize("task", sorted(ROUTERDC_COUNTS))
def test_routerdc_counts_and_quality_only(task: str) -> None:
    s = get(f"routerdc/{task}")
    assert (s.count("train"), s.count("test")) == ROUTERDC_COUNTS[task]
    assert len(s.models) == 7 and s.priced_models() == []
    assert "cost-based metrics do not apply" in s.meta["cost"]
