"""Fallback for users without a local data root: read a split from the Hugging Face hub.

Only used when `data_root()` finds nothing. `datasets` is imported lazily (it is
the optional `hub` extra); class-label columns come back as label names.
"""

from __future__ import annotations

from typing import Any

from evals.tasks.errors import DataUnavailableError


def load_hub_rows(dataset: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """All records of `dataset`/`config` `split` as plain dicts (ClassLabel ints -> names)."""
    try:
        import datasets
    except ImportError as e:
        raise DataUnavailableError(
            f"no local data root (pass data_root= or set $SCAFFOLD_DATA) and the `datasets` "
            f"package is not installed to fetch {dataset!r} from the hub "
            f"(pip install 'scaffold[hub]')"
        ) from e
    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as e:  # offline, unknown id, ...: say what was tried and how to avoid it
        raise DataUnavailableError(
            f"could not load {dataset!r} ({config or 'default'}, {split}) from the hub: {e}; "
            f"pass data_root= or set $SCAFFOLD_DATA to a folder with the task's files"
        ) from e
    label_columns = {
        name: feature
        for name, feature in ds.features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    rows = []
    for record in ds:
        row = dict(record)
        for name, feature in label_columns.items():
            row[name] = feature.int2str(row[name])
        rows.append(row)
    return rows


def hub_label_names(dataset: str, config: str | None, column: str) -> list[str]:
    """The ordered names of a ClassLabel column (e.g. BANKING77's 77 intents)."""
    try:
        import datasets
    except ImportError as e:
        raise DataUnavailableError(
            f"no local data root and the `datasets` package is not installed to read {dataset!r}"
        ) from e
    builder = datasets.load_dataset_builder(dataset, config)
    return list(builder.info.features[column].names)
