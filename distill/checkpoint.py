"""Durable training runs: a run folder whose append-only JSONL files are the truth for resume.

Layout of a run folder::

    config.json              the run's config; a resume must pass the same one
    metrics.jsonl            one row per logged event ({"step": ..., ...})
    transcripts.jsonl        a few training examples per step, token by token
                             (distill.transcripts writes the rows, distill.view reads them)
    checkpoints.jsonl        one row per COMMITTED checkpoint {"step", "path", "time", **extra}
    checkpoints/step_000123/ adapter/ (peft folder vLLM can load) + state.pt (optimizer, RNG, EMA)

A checkpoint is written to a temporary folder, renamed into place, and only then announced
by appending its row to ``checkpoints.jsonl``: that append is the commit point, so a kill at
any moment leaves either the previous checkpoint or the new one, never half of one. A kill
in the middle of an append leaves a torn last line; readers ignore it and opening the run
folder cuts it off, so the next append starts on a fresh line.

Metrics policy: `RunDir.restore` rewrites ``metrics.jsonl`` and ``transcripts.jsonl``
atomically, keeping only rows whose ``step`` is at most the restored checkpoint's step (all
step rows when there is no checkpoint). Steps redone after a resume are therefore logged
exactly once, and both stay plain files any tool can read.

Data order is reproducible: `epoch_order` is a seeded permutation per epoch and a
`DataCursor` (stored in the checkpoint's ``extra``) says where the next batch starts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from scaffold.errors import ScaffoldError

if TYPE_CHECKING:
    from distill.trainer import DistillTrainer

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TRANSCRIPTS_FILE = "transcripts.jsonl"
TRAINED_FILE = "trained.jsonl"  # every pair a step trained on (distill.export reads it)
CHECKPOINTS_FILE = "checkpoints.jsonl"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
FINAL_ADAPTER_DIR = "final_adapter"  # the run's last adapter, beside checkpoints/
GUARD_STOP_FILE = "guard_stop.json"  # why and where the collapse guard ended the run
# --teacher-contexts: the contexts the run chose at its first start (a resume reads these)
CONTEXTS_FILE = "teacher_contexts.json"
STATE_FILE = "state.pt"
RANKS_FILE = "ranks.pt"  # torchrun: every rank's RNG states (and optimizer shard under fsdp)
# Config keys a resumed run may change without changing what has been computed so far.
RESUMABLE_KEYS = frozenset(
    {"steps", "max_steps", "save_every", "eval_every", "log_every", "keep_last", "resume"}
)
_RESERVED = ("step", "path", "time")
_MISSING = object()


# The only non-tensor objects in state.pt: numpy's RNG state (an array of uint32). Loading
# with weights_only=True and these allowed means a foreign run folder cannot run code.
_NP_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
_STATE_GLOBALS = [_NP_CORE.multiarray._reconstruct, np.ndarray, np.dtype,
                  type(np.dtype(np.uint32))]
LOCK_FILE = ".lock"


class RunDirBusy(ScaffoldError, RuntimeError):
    """Another live process holds the run folder."""


class RunConfigMismatch(ScaffoldError, ValueError):
    """The run folder holds a run with a different config."""


# ---------------------------------------------------------------------------- data order


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of ``range(n)`` that depends only on (seed, epoch)."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    return rng.permutation(n).tolist()


@dataclass(frozen=True)
class DataCursor:
    """Where the next batch starts: position `index` in `epoch_order(n, seed, epoch)`."""

    epoch: int = 0
    index: int = 0

    def take(self, n: int, batch_size: int, seed: int) -> tuple[list[int], DataCursor]:
        """The next `batch_size` example indices (continuing into the next epoch's order
        when this one runs out) and the cursor after them."""
        if n < 1 or batch_size < 1:
            raise ValueError("take needs n >= 1 and batch_size >= 1")
        epoch, index, out = self.epoch, self.index, []
        while len(out) < batch_size:
            if index >= n:
                epoch, index = epoch + 1, 0
            order = epoch_order(n, seed, epoch)
            grab = order[index : index + batch_size - len(out)]
            out.extend(grab)
            index += len(grab)
        return out, DataCursor(epoch, index)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DataCursor:
        return cls(epoch=int(data["epoch"]), index=int(data["index"]))


# ---------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_HELD_LOCKS: dict[Path, int] = {}  # run folders this process holds: reopening one is a resume


def _lock_folder(path: Path) -> int:
    """Hold an exclusive lock on PATH/.lock for this process's lifetime (the kernel drops it
    when the process dies, SIGKILL included): two runs writing one folder interleave their
    checkpoints and metrics (two resumes of one folder both restored step 48 and both
    started a server before anything stopped them)."""
    import fcntl

    key = path.resolve()
    if key in _HELD_LOCKS:
        return _HELD_LOCKS[key]
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirBusy(f"{path} is in use by PID {holder}: wait for it, stop it, or pick a "
                         "new --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD_LOCKS[key] = fd
    return fd


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _append_jsonl(path: Path, row: dict) -> None:
    line = json.dumps(row, sort_keys=False, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file. An unterminated, unparseable last line (a kill mid-append) is
    ignored; a bad line elsewhere is an error (the file was edited or corrupted)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # only an unterminated last line can be torn
                log.warning("%s: ignoring a torn last line", path)
                continue
            raise ValueError(f"{path}: line {i + 1} is not valid JSON: {line[:80]!r}") from None
    return rows


def _cut_torn_tail(path: Path) -> None:
    """Drop an unterminated last line (a kill during an append) so the next append starts on
    a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data[: data.rfind(b"\n") + 1]
    log.warning("%s: cutting a torn last line (%d bytes)", path, len(data) - len(keep))
    with open(path, "r+b") as f:
        f.truncate(len(keep))
        f.flush()
        os.fsync(f.fileno())


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _normalize(config: dict) -> dict:
    """Round-trip through JSON so tuples/lists, dataclasses and paths compare as stored."""
    return json.loads(json.dumps(config, sort_keys=True, default=_json_default))


# ---------------------------------------------------------------------------- run folder


class RunDir:
    """A run folder (see the module docstring). ``resume=True`` continues a run with the same
    config (keys in `resumable_keys` may differ and are updated); ``resume=False`` refuses a
    folder that already holds a run. `defaults`: the values of config keys a folder made by
    an older version does not record."""

    def __init__(
        self,
        path: str | Path,
        config: dict,
        resume: bool = True,
        resumable_keys: Iterable[str] = RESUMABLE_KEYS,
        keep_last: int | None = None,
        defaults: dict | None = None,
        writer: bool = True,
    ) -> None:
        self.path = Path(path)
        self.keep_last = keep_last
        self.writer = writer
        if not writer:
            # another torchrun rank of the same run: rank 0 owns (locks, writes, cuts) the
            # folder; this one only restores from it, after rank 0 opened it
            self.config = _normalize(config)
            if not (self.path / CONFIG_FILE).is_file():
                raise NotARunFolder(f"{self.path}: no {CONFIG_FILE}; rank 0 opens the folder first")
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(self.path)
        self.config = _normalize(config)
        config_path = self.path / CONFIG_FILE
        if config_path.exists():
            if not resume:
                raise RunConfigMismatch(
                    f"{self.path} already holds a run and resume=False: pick a new --out "
                    "or delete the folder"
                )
            stored = json.loads(config_path.read_text(encoding="utf-8"))
            # a key added to the config after the run was made stands at its default there
            stored = {**_normalize(defaults or {}), **stored}
            safe = set(resumable_keys)
            differing = sorted(
                k
                for k in set(stored) | set(self.config)
                if k not in safe and stored.get(k, _MISSING) != self.config.get(k, _MISSING)
            )
            if differing:
                details = "; ".join(
                    f"{k}: stored {stored.get(k, '<absent>')!r}, now "
                    f"{self.config.get(k, '<absent>')!r}"
                    for k in differing[:5]
                )
                raise RunConfigMismatch(
                    f"{self.path} holds a run with a different config ({details}). Pick a new "
                    "--out, or pass the same flags to resume it."
                )
            if stored != self.config:
                _atomic_write_text(config_path, json.dumps(self.config, indent=2) + "\n")
        else:
            _atomic_write_text(config_path, json.dumps(self.config, indent=2) + "\n")
        for name in (METRICS_FILE, TRANSCRIPTS_FILE, TRAINED_FILE, CHECKPOINTS_FILE):
            _cut_torn_tail(self.path / name)
        # a checkpoint a killed run was writing: never committed, and the lock says nobody is
        for stale in (self.path / CHECKPOINTS_DIR).glob(".tmp_step_*"):
            shutil.rmtree(stale, ignore_errors=True)

    # ---------------------------------------------------------------- metrics

    def log_metrics(self, row: dict) -> None:
        """Append one row to metrics.jsonl (flushed and fsynced)."""
        _append_jsonl(self.path / METRICS_FILE, row)

    def metrics(self) -> list[dict]:
        """All metrics rows in the order they were logged."""
        return _read_jsonl(self.path / METRICS_FILE)

    def log_transcripts(self, rows: Iterable[dict]) -> None:
        """Append one step's transcript rows (each with its "step") to transcripts.jsonl."""
        for row in rows:
            _append_jsonl(self.path / TRANSCRIPTS_FILE, row)

    def transcripts(self) -> list[dict]:
        """All transcript rows, oldest step first."""
        return _read_jsonl(self.path / TRANSCRIPTS_FILE)

    def log_trained(self, rows: Iterable[dict]) -> None:
        """Append one step's trained pairs (each with its "step") to trained.jsonl."""
        for row in rows:
            _append_jsonl(self.path / TRAINED_FILE, row)

    def record_guard_stop(self, record: dict) -> None:
        """The collapse guard ended the run (distill/guard.py): the alarm, and the checkpoint
        ("healthy_step", "healthy_path") whose adapter the run ends with."""
        _atomic_write_text(self.path / GUARD_STOP_FILE, json.dumps(record, indent=2) + "\n")

    def record_contexts(self, record: dict) -> None:
        """The recorded teacher contexts this run trains on (distill/replay.py), written once
        at its first start: a resume trains on the same ones whatever the recording runs'
        files hold by then."""
        _atomic_write_text(self.path / CONTEXTS_FILE, json.dumps(record) + "\n")

    def recorded_contexts(self) -> dict | None:
        """What `record_contexts` wrote; None before the first start wrote it."""
        try:
            return json.loads((self.path / CONTEXTS_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def guard_stop(self) -> dict | None:
        """The guard's stop record, with "healthy_adapter" resolved inside the folder; None
        if the guard never stopped this run."""
        try:
            record = json.loads((self.path / GUARD_STOP_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        record["healthy_adapter"] = self._inside(record["healthy_path"]) / ADAPTER_DIR
        return record

    # ---------------------------------------------------------------- checkpoints

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / CHECKPOINTS_DIR / f"step_{step:06d}"

    def save_checkpoint(self, step: int, trainer: DistillTrainer, extra: dict,
                        ranks: list[dict] | None = None) -> Path:
        """Write checkpoints/step_NNNNNN/{adapter/, state.pt} atomically, then commit it by
        appending {"step", "path", "time", **extra} to checkpoints.jsonl. `ranks`: under
        torchrun, every rank's `DistillTrainer.rank_state()` (rank order), kept in ranks.pt
        beside state.pt: its RNG states, and under fsdp its optimizer shard (without fsdp the
        adapter and optimizer are the same on every rank; the RNG is not)."""
        if not self.writer:
            raise RuntimeError("only the run folder's writer (rank 0) saves checkpoints")
        clash = [k for k in _RESERVED if k in extra]
        if clash:
            raise ValueError(f"extra may not use the reserved keys {clash}")
        extra = _normalize(extra)
        final = self.checkpoint_dir(step)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp_{final.name}."))
        try:
            trainer.save_adapter(tmp / ADAPTER_DIR)
            with open(tmp / STATE_FILE, "wb") as f:
                torch.save(trainer.state_dict_for_resume(), f)
                f.flush()
                os.fsync(f.fileno())
            if ranks is not None:
                with open(tmp / RANKS_FILE, "wb") as f:
                    torch.save(ranks, f)
                    f.flush()
                    os.fsync(f.fileno())
            for file in (tmp / ADAPTER_DIR).iterdir():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
            if final.exists():  # an uncommitted leftover from a killed run, or a redo
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(final.parent)
        row = {"step": int(step), "path": str(final.relative_to(self.path)), "time": time.time()}
        _append_jsonl(self.path / CHECKPOINTS_FILE, {**row, **extra})
        self._prune(keep=final)
        return final

    def checkpoints(self) -> list[dict]:
        """Committed checkpoint rows (torn last line ignored), oldest first."""
        return _read_jsonl(self.path / CHECKPOINTS_FILE)

    def committed_checkpoints(self) -> list[dict]:
        """The committed checkpoint rows whose folders are complete, oldest first."""
        return [row for row in self.checkpoints() if _is_complete(self._inside(row["path"]))]

    def latest_checkpoint(self) -> dict | None:
        """The last committed checkpoint whose folder is complete, or None."""
        for row in reversed(self.checkpoints()):
            folder = self._inside(row["path"])
            if _is_complete(folder):
                return row
            log.warning("checkpoint %s is listed but incomplete; skipping it", folder)
        return None

    def restore(self, trainer: DistillTrainer, rank: int = 0, world_size: int = 1) -> dict | None:
        """Load the latest checkpoint into `trainer` (adapter weights + resume state), drop
        metrics rows logged after it, and return its `extra` (None for a fresh run). Under
        torchrun every rank restores; rank `rank` takes its own RNG states (and fsdp optimizer
        shard) from ranks.pt, and a checkpoint saved by another number of processes is refused
        (not exact)."""
        row = self.latest_checkpoint()
        if self.writer:
            for name in (METRICS_FILE, TRANSCRIPTS_FILE, TRAINED_FILE):
                self._truncate_log(name, after_step=row["step"] if row else None)
        if row is None:
            return None
        folder = self._inside(row["path"])
        with torch.serialization.safe_globals(_STATE_GLOBALS):
            state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        ranks: list[dict] = [{"rng": state["rng"], "optimizer": None}]
        if (folder / RANKS_FILE).is_file():
            with torch.serialization.safe_globals(_STATE_GLOBALS):
                ranks = torch.load(folder / RANKS_FILE, map_location="cpu", weights_only=True)
        if len(ranks) != world_size:  # before anything is loaded into the trainer
            raise RunConfigMismatch(
                f"{folder} was saved by {len(ranks)} training process(es) and is resumed by "
                f"{world_size}: resume with torchrun --nproc_per_node {len(ranks)} (each rank's "
                "share of a step and its RNG state are part of the checkpoint)")
        trainer.load_adapter(folder / ADAPTER_DIR)
        trainer.load_resume_state(state)
        if trainer.step != row["step"]:
            raise RuntimeError(f"{folder}: state step {trainer.step} != listed step {row['step']}")
        mine = ranks[rank]
        # ranks.pt before fsdp held each rank's bare RNG states
        trainer.load_rank_state(mine if "rng" in mine else {"rng": mine, "optimizer": None})
        return {k: v for k, v in row.items() if k not in _RESERVED}

    # ---------------------------------------------------------------- internals

    def _inside(self, listed: str) -> Path:
        """A checkpoint path read from checkpoints.jsonl, refused unless it lies inside the
        run folder (a foreign checkpoints.jsonl must not point the loader elsewhere)."""
        folder = (self.path / listed).resolve()
        if not folder.is_relative_to(self.path.resolve()):
            raise RunConfigMismatch(f"{self.path / CHECKPOINTS_FILE}: checkpoint path "
                                    f"{listed!r} lies outside the run folder; refusing it")
        return folder

    def _truncate_log(self, name: str, after_step: int | None) -> None:
        """Keep rows up to the checkpoint's step (rows without a step are kept); with no
        checkpoint the run starts over, so every row goes."""
        rows = _read_jsonl(self.path / name)
        if after_step is None:
            kept = []
        else:
            kept = [r for r in rows if not isinstance(r.get("step"), int) or r["step"] <= after_step]
        if len(kept) != len(rows):
            log.info("dropping %d %s rows logged after the checkpoint", len(rows) - len(kept), name)
            _atomic_write_text(
                self.path / name,
                "".join(json.dumps(r, default=_json_default) + "\n" for r in kept),
            )

    def _prune(self, keep: Path) -> None:
        if not self.keep_last:
            return
        rows = self.checkpoints()
        for row in rows[: -self.keep_last]:
            folder = self._inside(row["path"])
            if folder != keep.resolve() and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class RunRecord:
    """What a reader (distill.view) needs of a run folder, read without taking its lock."""

    path: Path
    config: dict
    metrics: list[dict]
    transcripts: list[dict]
    adapters: dict[int, Path] = field(default_factory=dict)  # step -> committed adapter folder
    trained_file: Path | None = None  # trained.jsonl, where the run wrote one (read_trained)


class NotARunFolder(ScaffoldError, FileNotFoundError):
    """The folder holds no run (no config.json)."""


def read_run(path: str | Path) -> RunRecord:
    """A run folder's config, metrics and transcripts, as they stand (a live run may be
    appending: a torn last line is ignored, nothing is written)."""
    path = Path(path)
    config = path / CONFIG_FILE
    if not config.is_file():
        raise NotARunFolder(f"{path} is not a run folder (no {CONFIG_FILE}): pass the --out "
                            "folder of a distill.run")
    adapters = {}
    for row in _read_jsonl(path / CHECKPOINTS_FILE):
        folder = path / row["path"]
        if _is_complete(folder):  # committed and whole: a later prune may have removed it
            adapters[int(row["step"])] = folder / ADAPTER_DIR
    return RunRecord(path, json.loads(config.read_text(encoding="utf-8")),
                     _read_jsonl(path / METRICS_FILE), _read_jsonl(path / TRANSCRIPTS_FILE),
                     adapters, path / TRAINED_FILE if (path / TRAINED_FILE).is_file() else None)


def read_trained(record: RunRecord) -> list[dict]:
    """The run's trained pairs (trained.jsonl), oldest step first; [] where it wrote none.
    Read on demand: a long run's file is tens of MB (every prompt of every step)."""
    return _read_jsonl(record.trained_file) if record.trained_file else []


def _is_complete(folder: Path) -> bool:
    adapter = folder / ADAPTER_DIR
    return (
        (folder / STATE_FILE).is_file()
        and (adapter / "adapter_config.json").is_file()
        and (adapter / "adapter_model.safetensors").is_file()
    )
