"""Precedent index: the labelled training examples nearest to a query.

A harness such as draft -> verify shows the model *precedents*: training
examples that share the draft's label (confirmers) and near ones that carry a
different label (challengers). This module embeds a bank of (id, text, label)
rows once, stores the unit vectors in faiss, and answers those questions with
cosine similarity (inner product of normalized vectors).

No leakage: build the bank from the TRAINING split only. That is the caller's
job, but `build(..., forbidden_texts=test_texts)` is a cheap guard that refuses
a bank containing any test text (compared after collapsing whitespace and case).
During training, pass the example's own id in `exclude_ids` so an example never
retrieves itself.

    index = PrecedentIndex.build(ids, texts, labels, load_embedder(), forbidden_texts=test_texts)
    index.confirmers("my card has not arrived", draft_label="card_arrival", k=3)
    index.challengers("my card has not arrived", draft_label="card_arrival", k=3)
    index.save("runs/bank"); PrecedentIndex.load("runs/bank")
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from scaffold.embeddings import Embedder, load_embedder
from scaffold.errors import ScaffoldError
from scaffold.types import normalize_text

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
META_FILE = "precedents.json"
IVF_THRESHOLD = 100_000  # "auto" switches from exact search to IVF above this many rows
QUERY_CACHE_SIZE = 4096  # query text -> vector; a harness asks several questions about one text
# sentence-transformers sorts a call's texts by length and pads each batch to its longest:
# 64 held-out BANKING77 queries (14.5 tokens on average, 58 at most) took 9.0 ms of CPU
# each in one batch of 64, 6.2 in batches of 32, 5.1 in batches of 16 or 8 (Zen 5, alone),
# with vectors equal within 2e-7.
QUERY_BATCH_SIZE = 16
_WIDEN = 4  # each retry of a filtered search fetches this many times more candidates


class LeakageError(ScaffoldError, ValueError):
    """The bank contains a text from the evaluation split."""


@dataclass
class Precedent:
    """One retrieved bank row; `score` is the cosine similarity to the query."""

    id: str
    text: str
    label: str | None
    score: float
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Filter:
    """What one query may retrieve."""

    exclude_rows: frozenset[int] = frozenset()
    label: str | None = None  # keep only this label
    exclude_label: str | None = None  # drop this label
    distinct_labels: bool = False  # at most one row per label (unlabelled rows dropped)

    def first_fetch(self, k: int) -> int:
        base = k + len(self.exclude_rows)
        filtered = self.label is not None or self.exclude_label is not None or self.distinct_labels
        return base * _WIDEN if filtered else base


class PrecedentIndex:
    """Labelled bank rows plus a faiss inner-product index over their unit embeddings."""

    def __init__(
        self,
        index: faiss.Index,
        ids: Sequence[str],
        texts: Sequence[str],
        labels: Sequence[str | None],
        meta: Sequence[dict],
        embedder: Embedder,
        index_type: str,
        embedder_name: str | None = None,
    ) -> None:
        """Wrap an already-filled faiss index; use `build` or `load` instead of calling this."""
        if not len(ids) == len(texts) == len(labels) == len(meta) == index.ntotal:
            raise ValueError(
                f"bank sizes disagree: {len(ids)} ids, {len(texts)} texts, {len(labels)} labels, "
                f"{len(meta)} meta, {index.ntotal} vectors"
            )
        self._index = index
        self.ids = tuple(ids)
        self.texts = tuple(texts)
        self.labels = tuple(labels)
        self.meta = tuple(meta)
        self.embedder = embedder
        self.embedder_name = embedder_name or getattr(embedder, "name", None)
        self.index_type = index_type
        self.dim = int(index.d)
        self._row_of = {id_: row for row, id_ in enumerate(self.ids)}
        # A query that is a bank text (a training question in the full-label regime) has its
        # vector in the index already: same embedder, same text. Reading it back skips
        # MiniLM's ~17 ms of CPU per query (README, Benchmarks: harness_throughput).
        self._row_of_text: dict[str, int] = {}
        for row, text in enumerate(self.texts):
            self._row_of_text.setdefault(text, row)
        self._direct_map_ready = index_type != "ivf"
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        if len(self._row_of) != len(self.ids):
            raise ValueError(
                f"precedent ids must be unique; duplicated: {_duplicates(self.ids)[:10]}"
            )

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        ids: list[str],
        texts: list[str],
        labels: list[str | None],
        embedder: Embedder,
        meta: list[dict] | None = None,
        index_type: str = "flat",
        nlist: int | None = None,
        batch_size: int = 64,
        progress: bool = True,
        nprobe: int | None = None,
        forbidden_texts: Iterable[str] | None = None,
    ) -> PrecedentIndex:
        """Embed a TRAINING-split bank and index it.

        index_type: "flat" (exact cosine, faiss.IndexFlatIP), "ivf" (IndexIVFFlat with inner
        product: `nlist` clusters, default ~4*sqrt(N), trained on the bank itself; search
        visits `nprobe` of them, default max(16, nlist/8)) or "auto" (ivf above
        IVF_THRESHOLD rows). forbidden_texts: the evaluation texts; any bank text equal to one
        of them (modulo whitespace and case) raises LeakageError.
        """
        meta = [{} for _ in ids] if meta is None else list(meta)
        if not len(ids) == len(texts) == len(labels) == len(meta):
            raise ValueError(
                f"build needs one text, label and meta per id: {len(ids)} ids, {len(texts)} "
                f"texts, {len(labels)} labels, {len(meta)} meta"
            )
        duplicated = _duplicates(ids)
        if duplicated:
            raise ValueError(f"precedent ids must be unique; duplicated: {duplicated[:10]}")
        if forbidden_texts is not None:
            _check_leakage(texts, forbidden_texts)
        if index_type == "auto":
            index_type = "ivf" if len(ids) > IVF_THRESHOLD else "flat"
        if index_type not in ("flat", "ivf"):
            raise ValueError(f"index_type must be 'flat', 'ivf' or 'auto', not {index_type!r}")

        vectors = embedder.encode(list(texts), batch_size=batch_size, progress=progress)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), embedder.dim):
            raise ValueError(
                f"embedder returned shape {vectors.shape}, expected ({len(texts)}, {embedder.dim})"
            )
        if index_type == "flat":
            index = faiss.IndexFlatIP(embedder.dim)
        else:
            index = _train_ivf(vectors, nlist, nprobe)
        index.add(vectors)
        return cls(index, ids, texts, labels, meta, embedder, index_type)

    # ------------------------------------------------------------------ basics

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._row_of

    def __repr__(self) -> str:
        return (
            f"PrecedentIndex({len(self)} rows, {len(set(self.labels))} labels, "
            f"{self.index_type}, dim={self.dim}, embedder={self.embedder_name!r})"
        )

    @property
    def nlist(self) -> int | None:
        """Number of IVF clusters (None for a flat index)."""
        return int(self._index.nlist) if self.index_type == "ivf" else None

    @property
    def nprobe(self) -> int | None:
        """IVF clusters visited per search (None for a flat index); nprobe == nlist is exact."""
        return int(self._index.nprobe) if self.index_type == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.index_type != "ivf":
            raise ValueError("nprobe only applies to an IVF index")
        if not 1 <= value <= self.nlist:
            raise ValueError(f"nprobe must be in 1..{self.nlist}, not {value}")
        self._index.nprobe = int(value)

    # ------------------------------------------------------------------ search

    def search(
        self,
        query: str | np.ndarray,
        k: int,
        exclude_ids: Collection[str] = (),
        label: str | None = None,
        exclude_label: str | None = None,
        distinct_labels: bool = False,
    ) -> list[Precedent]:
        """The k nearest rows to `query` (a text or a vector), nearest first.

        exclude_ids: rows never returned (the query's own id during training).
        label / exclude_label: keep only that label / only other labels.
        distinct_labels: at most one row per label, unlabelled rows skipped.
        Returns k rows whenever the bank holds k that pass the filters: the search
        widens until it finds them or has looked at the whole bank.
        """
        vectors = self._query_vectors(query)
        return self._search_vectors(
            vectors, k, [self._filter(exclude_ids, label, exclude_label, distinct_labels)]
        )[0]

    def search_batch(
        self,
        queries: list[str] | np.ndarray,
        k: int,
        exclude_ids: list[Collection[str]] | None = None,
        label: str | None | Sequence[str | None] = None,
        exclude_label: str | None | Sequence[str | None] = None,
        distinct_labels: bool = False,
    ) -> list[list[Precedent]]:
        """`search` for many queries, embedded in one batch and searched in one faiss call.

        exclude_ids is one collection per query; label and exclude_label are either one
        value for all queries or a list with one value per query.
        """
        vectors = self._query_vectors(queries)
        n = len(vectors)
        excludes = [()] * n if exclude_ids is None else list(exclude_ids)
        labels = _per_query(label, n, "label")
        exclude_labels = _per_query(exclude_label, n, "exclude_label")
        if len(excludes) != n:
            raise ValueError(f"exclude_ids has {len(excludes)} entries for {n} queries")
        filters = [
            self._filter(excludes[i], labels[i], exclude_labels[i], distinct_labels)
            for i in range(n)
        ]
        return self._search_vectors(vectors, k, filters)

    def confirmers(
        self, query: str | np.ndarray, draft_label: str, k: int, exclude_ids: Collection[str] = ()
    ) -> list[Precedent]:
        """The k nearest rows that share the draft's label, nearest first."""
        return self.search(query, k, exclude_ids=exclude_ids, label=draft_label)

    def challengers(
        self, query: str | np.ndarray, draft_label: str, k: int, exclude_ids: Collection[str] = ()
    ) -> list[Precedent]:
        """The nearest rows with a label other than the draft's, at most one per label.

        So k challengers show k alternative labels (fewer only if the bank has fewer).
        """
        return self.search(
            query, k, exclude_ids=exclude_ids, exclude_label=draft_label, distinct_labels=True
        )

    def knn_vote(
        self, query: str | np.ndarray, k: int, exclude_ids: Collection[str] = ()
    ) -> tuple[str | None, list[Precedent]]:
        """Similarity-weighted majority label of the k nearest rows (the no-LLM baseline)."""
        neighbours = self.search(query, k, exclude_ids=exclude_ids)
        return weighted_vote(neighbours), neighbours

    def knn_vote_batch(
        self,
        queries: list[str] | np.ndarray,
        k: int,
        exclude_ids: list[Collection[str]] | None = None,
    ) -> list[tuple[str | None, list[Precedent]]]:
        """`knn_vote` for many queries at once."""
        return [
            (weighted_vote(n), n) for n in self.search_batch(queries, k, exclude_ids=exclude_ids)
        ]

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Write the faiss index and a JSON of rows and settings into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        record = {
            "format_version": FORMAT_VERSION,
            "embedder": self.embedder_name,
            "index_type": self.index_type,
            "dim": self.dim,
            "size": len(self),
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "ids": list(self.ids),
            "texts": list(self.texts),
            "labels": list(self.labels),
            "meta": list(self.meta),
        }
        meta_tmp = directory / f"{META_FILE}.tmp"
        meta_tmp.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        index_tmp = directory / f"{INDEX_FILE}.tmp"
        faiss.write_index(self._index, str(index_tmp))
        os.replace(index_tmp, directory / INDEX_FILE)
        os.replace(meta_tmp, directory / META_FILE)

    @classmethod
    def load(cls, directory: str | Path, embedder: Embedder | None = None) -> PrecedentIndex:
        """Read an index written by `save`; loads the embedder it names unless one is given."""
        directory = Path(directory)
        missing = [name for name in (INDEX_FILE, META_FILE) if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{directory} does not hold a saved PrecedentIndex: missing {', '.join(missing)}"
            )
        record = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        if record.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{directory / META_FILE} has format_version {record.get('format_version')!r}; "
                f"this code reads version {FORMAT_VERSION}"
            )
        saved_name = record.get("embedder")
        if embedder is None:
            if not saved_name:
                raise ValueError(f"{directory} was saved without an embedder name; pass embedder=")
            embedder = load_embedder(saved_name)
        elif saved_name and getattr(embedder, "name", saved_name) != saved_name:
            warnings.warn(
                f"index was built with embedder {saved_name!r} but is loaded with "
                f"{getattr(embedder, 'name', None)!r}; similarities are meaningless if they differ",
                stacklevel=2,
            )
        index = faiss.read_index(str(directory / INDEX_FILE))
        if not index.d == record["dim"] == embedder.dim:
            raise ValueError(
                f"dimension mismatch loading {directory}: faiss index {index.d}, metadata "
                f"{record['dim']}, embedder {embedder.dim}"
            )
        return cls(
            index,
            record["ids"],
            record["texts"],
            record["labels"],
            record["meta"],
            embedder,
            record["index_type"],
            embedder_name=saved_name,
        )

    # ------------------------------------------------------------------ internals

    def _filter(
        self,
        exclude_ids: Collection[str],
        label: str | None,
        exclude_label: str | None,
        distinct_labels: bool,
    ) -> _Filter:
        if isinstance(exclude_ids, str):  # a lone id would otherwise be split into characters
            exclude_ids = (exclude_ids,)
        rows = frozenset(self._row_of[i] for i in exclude_ids if i in self._row_of)
        return _Filter(rows, label, exclude_label, distinct_labels)

    def _query_vectors(self, queries: str | list[str] | np.ndarray) -> np.ndarray:
        """Queries as a float32 [n, dim] array of unit rows."""
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, np.ndarray):
            vectors = np.array(queries, dtype=np.float32, ndmin=2)  # copy: we normalize in place
            if vectors.ndim != 2 or vectors.shape[1] != self.dim:
                raise ValueError(f"query vectors must have {self.dim} columns, got {queries.shape}")
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            np.divide(vectors, norms, out=vectors, where=norms > 0)
            return vectors
        return self._encode_cached(list(queries))

    def _stored_vectors(self, texts: list[str]) -> np.ndarray:
        """The index's own unit vectors of bank texts (an IVF index gets its row map once)."""
        with self._cache_lock:
            if not self._direct_map_ready:
                faiss.extract_index_ivf(self._index).make_direct_map()
                self._direct_map_ready = True
        return np.stack([self._index.reconstruct(self._row_of_text[t]) for t in texts])

    def forget_queries(self) -> None:
        """Drop the cached query vectors (a benchmark timing the same queries twice)."""
        with self._cache_lock:
            self._query_cache.clear()

    def warm(self, queries: Sequence[str]) -> None:
        """Embed upcoming queries in one batch (the cache then serves each search)."""
        for start in range(0, len(queries), QUERY_CACHE_SIZE):
            self._encode_cached(list(queries[start:start + QUERY_CACHE_SIZE]))

    def _encode_cached(self, texts: list[str]) -> np.ndarray:
        """Embed texts, reusing recent query vectors (search, vote, confirmers and
        challengers on one question then embed it once)."""
        found: dict[str, np.ndarray] = {}
        with self._cache_lock:
            for text in texts:
                if text in self._query_cache:
                    found[text] = self._query_cache[text]
                    self._query_cache.move_to_end(text)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            stored = [t for t in missing if t in self._row_of_text]
            if stored:
                found.update(zip(stored, self._stored_vectors(stored), strict=True))
                missing = [t for t in missing if t not in self._row_of_text]
        if missing:
            fresh = np.asarray(self.embedder.encode(missing, batch_size=QUERY_BATCH_SIZE,
                                                    progress=False), dtype=np.float32)
            found.update(zip(missing, fresh, strict=True))
            with self._cache_lock:
                for text, vector in zip(missing, fresh, strict=True):
                    self._query_cache[text] = vector
                while len(self._query_cache) > QUERY_CACHE_SIZE:
                    self._query_cache.popitem(last=False)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.stack([found[t] for t in texts]), dtype=np.float32)

    def _search_vectors(
        self, vectors: np.ndarray, k: int, filters: list[_Filter]
    ) -> list[list[Precedent]]:
        """Filtered k-NN: over-fetch, and widen (then probe every IVF cluster) until k pass."""
        n_bank = len(self)
        results: list[list[Precedent]] = [[] for _ in filters]
        if k <= 0 or n_bank == 0:
            return results
        is_ivf = self.index_type == "ivf"
        fetch = [min(n_bank, f.first_fetch(k)) for f in filters]
        probe_all = [False] * len(filters)
        pending = list(range(len(filters)))
        while pending:
            still_pending = []
            for every_cluster in (False, True):
                group = [q for q in pending if probe_all[q] == every_cluster]
                if not group:
                    continue
                width = max(fetch[q] for q in group)
                scores, rows = self._raw_search(vectors[group], width, every_cluster)
                for j, q in enumerate(group):
                    hits = self._collect(scores[j], rows[j], k, filters[q])
                    results[q] = hits
                    if len(hits) >= k:
                        continue
                    lists_exhausted = bool((rows[j] < 0).any())  # IVF: probed clusters ran out
                    partial_probe = is_ivf and not every_cluster and self._index.nprobe < self.nlist
                    if partial_probe and (lists_exhausted or width >= n_bank):
                        probe_all[q] = True
                        fetch[q] = min(n_bank, width * _WIDEN)
                        still_pending.append(q)
                    elif width < n_bank:
                        fetch[q] = min(n_bank, width * _WIDEN)
                        still_pending.append(q)
                    # else: the whole bank was searched; fewer than k rows pass the filters
            pending = still_pending
        return results

    def _raw_search(
        self, vectors: np.ndarray, width: int, every_cluster: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.index_type == "ivf":
            nprobe = self._index.nlist if every_cluster else self._index.nprobe
            params = faiss.SearchParametersIVF(nprobe=int(nprobe))
            return self._index.search(vectors, width, params=params)
        return self._index.search(vectors, width)

    def _collect(
        self, scores: np.ndarray, rows: np.ndarray, k: int, filt: _Filter
    ) -> list[Precedent]:
        hits: list[Precedent] = []
        seen_labels: set[str] = set()
        for score, row in zip(scores.tolist(), rows.tolist(), strict=True):
            if row < 0:  # faiss pads missing results with -1
                break
            if row in filt.exclude_rows:
                continue
            label = self.labels[row]
            if filt.label is not None and label != filt.label:
                continue
            if filt.exclude_label is not None and label == filt.exclude_label:
                continue
            if filt.distinct_labels:
                if label is None or label in seen_labels:
                    continue
                seen_labels.add(label)
            hits.append(
                Precedent(self.ids[row], self.texts[row], label, float(score), dict(self.meta[row]))
            )
            if len(hits) == k:
                break
        return hits


def weighted_vote(precedents: Sequence[Precedent]) -> str | None:
    """The label with the largest total similarity (negative similarities count as 0).

    Ties go to the label with more votes, then to the one whose nearest row is nearest.
    Unlabelled rows do not vote; None when nothing votes.
    """
    tally: dict[str, list[float]] = {}  # label -> [weight, count, -first_rank]
    for rank, p in enumerate(precedents):
        if p.label is None:
            continue
        entry = tally.setdefault(p.label, [0.0, 0.0, -float(rank)])
        entry[0] += max(p.score, 0.0)
        entry[1] += 1
    if not tally:
        return None
    return max(tally, key=lambda lab: tuple(tally[lab]))


def _train_ivf(vectors: np.ndarray, nlist: int | None, nprobe: int | None) -> faiss.IndexIVFFlat:
    n, dim = vectors.shape
    if n == 0:
        raise ValueError("cannot train an IVF index on an empty bank; use index_type='flat'")
    nlist = max(1, min(n, round(4 * math.sqrt(n)))) if nlist is None else nlist
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist must be in 1..{n} (the bank size), not {nlist}")
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.nprobe = min(nlist, max(16, nlist // 8)) if nprobe is None else nprobe
    if not 1 <= index.nprobe <= nlist:
        raise ValueError(f"nprobe must be in 1..{nlist}, not {nprobe}")
    return index


def find_leaks(texts: Sequence[str], forbidden_texts: Iterable[str]) -> list[int]:
    """Positions of `texts` equal to a forbidden (evaluation) text once normalized
    (`normalize_text`: case, whitespace and punctuation do not count).

    Datasets do repeat items across splits (BANKING77: 7 train texts equal a test text once
    whitespace is collapsed, 18 more once punctuation is dropped); drop these rows from the
    bank before `build` (`Task.load` drops them from train).
    """
    forbidden = {normalize_text(t) for t in forbidden_texts}
    return [i for i, text in enumerate(texts) if normalize_text(text) in forbidden]


def _check_leakage(texts: Sequence[str], forbidden_texts: Iterable[str]) -> None:
    leaked = find_leaks(texts, forbidden_texts)
    if leaked:
        examples = [texts[i] for i in leaked[:3]]
        raise LeakageError(
            f"{len(leaked)} bank text(s) also appear in the forbidden (evaluation) texts, e.g. "
            f"{examples!r}; build the bank from the training split only "
            "(scaffold.precedents.find_leaks gives their positions)"
        )


def _duplicates(items: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    dup: list[str] = []
    for item in items:
        if item in seen and item not in dup:
            dup.append(item)
        seen.add(item)
    return dup


def _per_query(value: str | None | Sequence[str | None], n: int, name: str) -> list[str | None]:
    if value is None or isinstance(value, str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} queries")
    return values
