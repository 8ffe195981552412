"""Read the project's artefacts into pandas DataFrames (the notebooks in ``notebooks/`` use this).

Three kinds of artefacts, each written by one of the apps:

- **Aligned-LLM score caches** (``prefalign-score``): one folder per (data, model, template,
  ``max_length``) under ``aligned.cache_dir``, holding ``meta.json`` and ``table/``.
  :func:`load_scores` reads them, either for a config (the same data and ensemble as the scoring
  run, so the cache folders are found by fingerprint and every sample carries its ``noise`` flag)
  or by scanning a cache root. :func:`aggregate_scores` turns the long table into one row per
  sample with the ensemble's ``avg`` / ``min`` / ``max``; :func:`score_thresholds` gives the score
  threshold of keeping a top fraction, with the same rule as ``data.filter_top_fraction``.
- **Training runs** (``prefalign-train``): a run folder with ``.hydra/config.yaml``,
  ``csv/metrics.csv``, ``checkpoints/`` and ``wandb/offline-run-*/``. :func:`find_runs`,
  :func:`load_run_config`, :func:`load_run_metrics`, :func:`epoch_summary`,
  :func:`list_checkpoints`; from the W&B offline files: :func:`load_wandb_history` (every logged
  row, histograms included), :func:`histogram_rows` and :func:`load_wandb_tables` (the rows of
  ``wandb.Table`` s such as ``train/samples``).
- **Iterative SSO runs** (``prefalign-sso``): ``<work_dir>/iter_<i>/`` with one
  ``<stage>.done.json`` per finished stage and ``preferences.jsonl``. :func:`load_sso_reports`
  (one row per iteration) and :func:`load_sso_samples` (one row per generated triple).

Every reader raises :class:`ArtefactError` naming the file (and row) when an artefact is missing
or malformed.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from prefalign.config import compose_config
from prefalign.core.errors import DataError
from prefalign.core.jsonl import read_jsonl
from prefalign.data.filtering import top_fraction_count
from prefalign.pipelines.artefacts import ARTEFACTS
from prefalign.pipelines.sso import STAGES
from prefalign.scoring.aligned import AGGREGATIONS as _AGGREGATION_RULES

__all__ = [
    "ArtefactError",
    "compose_config",
    "load_scores",
    "aggregate_scores",
    "score_thresholds",
    "find_runs",
    "load_run_config",
    "load_run_metrics",
    "epoch_summary",
    "list_checkpoints",
    "find_wandb_run_files",
    "read_wandb_records",
    "load_wandb_history",
    "histogram_rows",
    "load_wandb_tables",
    "load_sso_reports",
    "load_sso_samples",
]

# The library's rules, imported rather than restated: the ensemble aggregations of ``aligned_score``,
# the top-fraction filter's kept count, the SSO pipeline's stages.
AGGREGATIONS = tuple(_AGGREGATION_RULES)
SSO_STAGES = STAGES


class ArtefactError(FileNotFoundError):
    """An artefact is missing or cannot be read; the message names the file (and row)."""


# -- configs --------------------------------------------------------------------------------------
# -- aligned-LLM scores ---------------------------------------------------------------------------
def _score_rows(folder: Path) -> pd.DataFrame:
    from prefalign.scoring.engine import load_score_table

    if not (folder / "meta.json").exists() or not (folder / "table").exists():
        raise ArtefactError(f"{folder}: not a finished score table (expected meta.json and table/)")
    try:
        table = load_score_table(folder).table.to_pandas()
    except (OSError, ValueError, KeyError) as error:
        raise ArtefactError(f"{folder}: cannot read the score table: {error}") from error
    missing = {"id", "logp_sum", "num_tokens"} - set(table.columns)
    if missing:
        raise ArtefactError(f"{folder}/table: missing column(s) {sorted(missing)}")
    bad = table.index[table["num_tokens"] <= 0]
    if len(bad):
        raise ArtefactError(
            f"{folder}/table: row {int(bad[0])} (id={table['id'][bad[0]]}) has no scored token"
        )
    table["r"] = table["logp_sum"] / table["num_tokens"]
    table["table"] = folder.name
    return table


def _scores_from_config(cfg: Any, splits: Sequence[str] | None) -> pd.DataFrame:
    from omegaconf import OmegaConf

    from prefalign.data.datamodule import DataSource, load_conversations
    from prefalign.data.records import ColumnMap
    from prefalign.scoring.aligned import members_used
    from prefalign.scoring.engine import find_cached_scores

    aligned = OmegaConf.to_container(cfg.aligned, resolve=True)
    columns = ColumnMap.from_config(OmegaConf.to_container(cfg.data.columns, resolve=True))
    noise = OmegaConf.to_container(cfg.data.noise, resolve=True) if cfg.data.get("noise") else None
    splits = list(splits) if splits is not None else list(cfg.get("splits") or ["train"])
    frames = []
    for split in splits:
        if cfg.data.get(split) is None:
            raise ArtefactError(f"the data config has no `{split}` source (splits: {splits})")
        source = DataSource.from_config(OmegaConf.to_container(cfg.data[split], resolve=True))
        ds, _ = load_conversations(
            source, columns, cfg.data.on_invalid, cfg.data.get("num_proc"), split, noise
        )
        flags = ds["noise"] if "noise" in ds.column_names else [False] * len(ds)
        noise_by_id = dict(zip(ds["id"], flags, strict=True))
        for member in members_used(aligned):
            folder, finished = find_cached_scores(
                ds, aligned["members"][member], int(aligned["max_length"]), aligned["cache_dir"]
            )
            if not finished:
                raise ArtefactError(
                    f"{folder}: no finished scores of aligned member {member!r} for the {split} split of "
                    f"{source.path}; run `prefalign-score` with the same data and aligned configs first"
                )
            table = _score_rows(folder)
            table.insert(0, "member", member)
            table.insert(0, "split", split)
            table["noise"] = table["id"].map(noise_by_id).fillna(False).astype(bool)
            frames.append(table)
    return pd.concat(frames, ignore_index=True)


def _scores_from_root(root: Path) -> pd.DataFrame:
    if not root.is_dir():
        raise ArtefactError(f"{root}: no such score cache folder")
    frames = []
    for meta_path in sorted(root.glob("*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as error:
            raise ArtefactError(f"{meta_path}: not valid JSON ({error})") from error
        table = _score_rows(meta_path.parent)
        source = str(meta.get("source", ""))
        table.insert(0, "member", meta.get("member", meta_path.parent.name))
        table.insert(0, "split", source.split(" ", 1)[0] if source else None)
        table["noise"] = pd.NA  # only the data config knows which samples are noise
        table["source"] = source
        frames.append(table)
    if not frames:
        raise ArtefactError(f"{root}: no finished score tables (no */meta.json)")
    return pd.concat(frames, ignore_index=True)


def load_scores(
    source: Any = None,
    *,
    overrides: Sequence[str] = (),
    splits: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Aligned-LLM scores as a long table: one row per (split, member, sample).

    Args:
        source: where the scores are.

            - ``None`` (with ``overrides``): the ``score`` config composed with ``overrides``, e.g.
              ``["data.noise={num_samples: 16, seed: 0}"]`` — exactly the overrides of the
              ``prefalign-score`` run.
            - a composed config (``score`` or ``train``: anything with ``data`` and ``aligned``).
            - a path: a score cache root (``aligned.cache_dir``), every finished table in it.

            With a config the data are rebuilt with the recipe shared by scoring and training, the
            tables are found by fingerprint and every row carries its ``noise`` flag; from a bare
            cache root ``noise`` is unknown (``<NA>``) and ``split`` comes from the table's metadata.
        overrides: overrides of the ``score`` config (only with ``source=None``).
        splits: splits to read (default: the config's ``splits``, else ``train``); config only.

    Returns:
        Columns ``split``, ``member``, ``id``, ``logp_sum``, ``num_tokens``, ``r`` (the
        length-normalised score ``logp_sum / num_tokens``), ``table`` (cache folder name) and
        ``noise`` (+ ``source`` from a cache root).
    """
    if source is None:
        return _scores_from_config(compose_config("score", overrides), splits)
    if isinstance(source, (str, Path)):
        if overrides or splits is not None:
            raise ValueError("load_scores: overrides and splits apply to configs, not to a cache folder")
        return _scores_from_root(Path(source).expanduser())
    return _scores_from_config(source, splits)


def aggregate_scores(scores: pd.DataFrame, aggregations: Iterable[str] = AGGREGATIONS) -> pd.DataFrame:
    """One row per (split, sample): each member's ``r`` as a column, plus the ensemble aggregates.

    ``avg`` / ``min`` / ``max`` over the members, as ``aligned.aggregation`` computes
    ``aligned_score`` for training. A sample missing some member's score gets ``NaN`` aggregates
    and is counted by the caller (``df[agg].isna().sum()``); training would stop or drop it.
    """
    aggregations = list(aggregations)
    unknown = [a for a in aggregations if a not in AGGREGATIONS]
    if unknown:
        raise ValueError(f"aggregations must be among {AGGREGATIONS}, got {unknown}")
    required = {"split", "member", "id", "r", "noise"}
    if required - set(scores.columns):
        raise ValueError(f"aggregate_scores needs columns {sorted(required)}; got {list(scores.columns)}")
    wide = scores.pivot_table(index=["split", "id"], columns="member", values="r", aggfunc="first")
    members = list(wide.columns)
    complete = wide.notna().all(axis=1)
    for name in aggregations:
        rule = _AGGREGATION_RULES[name]  # the rule training uses for aligned_score
        values = wide[members].apply(
            lambda row, rule=rule: rule(list(row)) if row.notna().all() else None, axis=1
        )
        wide[name] = values.astype(float).where(complete)
    noise = scores.drop_duplicates(["split", "id"]).set_index(["split", "id"])["noise"]
    wide["noise"] = noise.reindex(wide.index).to_numpy()
    wide.columns.name = None
    return wide.reset_index()


def score_thresholds(values: Iterable[float], fractions: Iterable[float]) -> pd.DataFrame:
    """The score threshold of keeping each top ``fraction`` of the samples (PoFT paper Figure 4).

    The same rule as ``data.filter_top_fraction``: ``max(1, round(fraction * n))`` samples with the
    highest scores are kept; ``threshold`` is the lowest kept score.
    """
    ordered = sorted((float(v) for v in values), reverse=True)
    if not ordered or any(not math.isfinite(v) for v in ordered):
        raise ValueError("score_thresholds needs a non-empty list of finite scores")
    rows = []
    for fraction in fractions:
        kept = top_fraction_count(fraction, len(ordered))
        rows.append({"fraction": fraction, "kept": kept, "threshold": ordered[kept - 1]})
    return pd.DataFrame(rows)


# -- training runs --------------------------------------------------------------------------------
def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The composed config of a ``prefalign-train`` run (``<run_dir>/.hydra/config.yaml``) as a dict."""
    import yaml

    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.exists():
        raise ArtefactError(f"{path}: no such file; is {run_dir} a prefalign-train run folder?")
    return yaml.safe_load(path.read_text())


def find_runs(log_dir: str | Path, task_name: str = "train") -> pd.DataFrame:
    """Every run folder under ``<log_dir>/<task_name>/runs/*`` and ``.../multiruns/*/*``, newest last.

    Columns ``run_dir``, ``objective`` (the config's ``objective._target_`` class name),
    ``aggregation`` (``aligned.aggregation``), ``tags``, ``has_metrics`` and ``mtime``.
    """
    base = Path(log_dir) / task_name
    rows = []
    for config in [*base.glob("runs/*/.hydra/config.yaml"), *base.glob("multiruns/*/*/.hydra/config.yaml")]:
        run_dir = config.parent.parent
        cfg = load_run_config(run_dir)
        target = str((cfg.get("objective") or {}).get("_target_", ""))
        rows.append(
            {
                "run_dir": run_dir,
                "objective": target.rsplit(".", 1)[-1],
                "aggregation": (cfg.get("aligned") or {}).get("aggregation"),
                "tags": cfg.get("tags"),
                "has_metrics": (run_dir / "csv" / "metrics.csv").exists(),
                "mtime": config.stat().st_mtime,
            }
        )
    columns = ["run_dir", "objective", "aggregation", "tags", "has_metrics", "mtime"]
    return pd.DataFrame(rows, columns=columns).sort_values("mtime", ignore_index=True)


def load_run_metrics(run_dir: str | Path) -> pd.DataFrame:
    """The CSV logger's metrics of a run (``<run_dir>/csv/metrics.csv``), one row per logging call.

    Columns as logged (``step``, ``epoch``, ``train/...``, ``val/...``, ``data/...``); empty cells
    are ``NaN``. ``run_dir`` may also be the ``metrics.csv`` file itself.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / "csv" / "metrics.csv"
    if not path.exists():
        raise ArtefactError(
            f"{path}: no such file; the run logs metrics there with the CSV logger (logger=default or csv)"
        )
    try:
        metrics = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ArtefactError(f"{path}: not a readable CSV file ({error})") from error
    if "step" not in metrics.columns:
        raise ArtefactError(f"{path}: no `step` column; columns are {list(metrics.columns)}")
    for column in metrics.columns:
        if not pd.api.types.is_numeric_dtype(metrics[column]):
            converted = pd.to_numeric(metrics[column], errors="coerce")
            bad = metrics[column].notna() & converted.isna()
            if bad.any():
                row = int(bad.idxmax())
                raise ArtefactError(
                    f"{path}: line {row + 2} (data row {row}), column {column!r}: "
                    f"{metrics[column][row]!r} is not a number"
                )
            metrics[column] = converted
    return metrics


def epoch_summary(metrics: pd.DataFrame, prefix: str = "train/") -> pd.DataFrame:
    """Per epoch, the mean of every per-step ``<prefix>*`` metric and the epoch-level ``val/*`` values.

    Per-step rows of the CSV logger carry no epoch for ``train/*`` values logged before the epoch
    column is filled, so rows are assigned to epochs by ``step`` (the epoch of the nearest later
    row that has one). Columns: ``epoch`` plus one column per metric (``_std`` columns are averaged
    too: the mean within-batch spread).
    """
    if "epoch" not in metrics.columns:
        raise ValueError("epoch_summary: the metrics have no `epoch` column")
    frame = metrics.sort_values("step", kind="stable").copy()
    frame["epoch"] = frame["epoch"].bfill().ffill()
    train_cols = [c for c in frame.columns if c.startswith(prefix)]
    val_cols = [c for c in frame.columns if c.startswith("val/")] if prefix != "val/" else []
    summary = frame.groupby("epoch")[train_cols].mean()
    if val_cols:
        summary = summary.join(frame.groupby("epoch")[val_cols].last())
    summary.index = summary.index.astype(int)
    return summary.reset_index()


def list_checkpoints(run_dir: str | Path) -> pd.DataFrame:
    """The epoch checkpoints of a run (``checkpoints/epoch_XXX.ckpt``, files or sharded folders).

    Columns ``epoch`` (1-based, as the papers count), ``path`` and ``bytes`` (folders: summed).
    """
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        raise ArtefactError(f"{folder}: no such folder; the run wrote no checkpoints")
    rows = []
    for path in sorted(folder.glob("epoch_*.ckpt")):
        match = re.fullmatch(r"epoch_(\d+)\.ckpt", path.name)
        if not match:
            continue
        size = (
            sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            if path.is_dir()
            else path.stat().st_size
        )
        rows.append({"epoch": int(match.group(1)) + 1, "path": path, "bytes": size})
    return pd.DataFrame(rows, columns=["epoch", "path", "bytes"])


# -- W&B offline files ----------------------------------------------------------------------------
# A ``.wandb`` file is a log of records in the LevelDB log layout: a 7-byte file header, then
# 32 KiB blocks of chunks, each chunk a 7-byte header (checksum: 4 bytes, length: 2, type: 1) and
# its data; a record is one FULL chunk or FIRST, MIDDLE..., LAST chunks; block tails shorter than a
# chunk header are zero padding. Each record is a ``wandb_internal_pb2.Record`` protobuf.
_WANDB_HEADER = b":W&B"
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def find_wandb_run_files(run_dir: str | Path) -> list[Path]:
    """The ``run-<id>.wandb`` files under ``run_dir`` (a run folder, its ``wandb/`` or an offline-run folder)."""
    root = Path(run_dir)
    files = sorted(root.glob("run-*.wandb")) or sorted(root.rglob("offline-run-*/run-*.wandb"))
    files += sorted(p for p in root.rglob("run-*/run-*.wandb") if p not in files)  # online runs' copies
    return files


def read_wandb_records(path: str | Path) -> Iterator[Any]:
    """Yield the protobuf records of a ``.wandb`` file, in order (a cut-off last record is skipped)."""
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(_WANDB_HEADER):
        raise ArtefactError(f"{path}: not a W&B run file (no {_WANDB_HEADER!r} header)")
    pos, pending = 7, None
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if len(chunk) < length:  # the writer was cut off mid-chunk
            return
        if kind == _FULL:
            pending = chunk
        elif kind == _FIRST:
            pending = chunk
            continue
        elif kind in (_MIDDLE, _LAST):
            if pending is None:
                raise ArtefactError(f"{path}: byte {pos}: a continuation chunk without its first chunk")
            pending += chunk
            if kind == _MIDDLE:
                continue
        else:
            raise ArtefactError(f"{path}: byte {pos}: unknown chunk type {kind}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = None
        yield record


def load_wandb_history(run: str | Path) -> pd.DataFrame:
    """Every ``wandb.log`` row of a run's offline ``.wandb`` file(s), one row per history record.

    ``run`` is a run folder (every ``run-*.wandb`` under it, in time order) or one ``.wandb`` file.
    Values are decoded from JSON: numbers stay numbers; media (histograms, tables) are dicts with a
    ``_type`` (``histogram``: ``bins`` and ``values``; ``table-file``: ``path`` under the run's
    ``files/``). Columns ``_run_file`` and ``_step`` say where each row came from.
    """
    path = Path(run)
    files = [path] if path.is_file() else find_wandb_run_files(path)
    if not files:
        raise ArtefactError(f"{path}: no W&B run file (run-*.wandb); was the run logged with W&B?")
    rows = []
    for run_file in files:
        for record in read_wandb_records(run_file):
            if record.WhichOneof("record_type") != "history":
                continue
            row: dict[str, Any] = {"_run_file": run_file}
            for item in record.history.item:
                path = [item.key] if item.key else list(item.nested_key)
                try:
                    value = json.loads(item.value_json)
                except json.JSONDecodeError as error:
                    raise ArtefactError(
                        f"{run_file}: history key {path}: bad JSON value ({error})"
                    ) from error
                target = row  # media are stored flattened: ["train/tau_hist", "bins"] -> a nested dict
                for part in path[:-1]:
                    target = target.setdefault(part, {})
                target[path[-1]] = value
            rows.append(row)
    return pd.DataFrame(rows)


def histogram_rows(history: pd.DataFrame, key: str, step_key: str = "trainer/global_step") -> pd.DataFrame:
    """The histograms logged under ``key`` (e.g. ``train/tau_hist``) as long rows.

    Columns ``step`` (``step_key``, else W&B's ``_step``), ``left``, ``right`` (bin edges),
    ``count`` — one row per bin of each logged histogram.
    """
    if key not in history.columns:
        raise KeyError(f"no histogram {key!r} in the W&B history; keys: {sorted(history.columns)}")
    rows = []
    for _, row in history[history[key].notna()].iterrows():
        value = row[key]
        if not isinstance(value, Mapping) or value.get("_type") != "histogram":
            raise ValueError(f"{key} at _step {row.get('_step')} is not a histogram: {value!r}")
        step = row.get(step_key) if step_key in row and pd.notna(row.get(step_key)) else row.get("_step")
        bins, counts = value["bins"], value["values"]
        for left, right, count in zip(bins[:-1], bins[1:], counts, strict=True):
            rows.append({"step": step, "left": left, "right": right, "count": count})
    return pd.DataFrame(rows, columns=["step", "left", "right", "count"])


def load_wandb_tables(run: str | Path, key: str | None = None) -> pd.DataFrame:
    """The rows of the ``wandb.Table`` s a run logged (e.g. the ``train/samples`` table), stacked.

    Read from the table files W&B writes under the offline run's ``files/`` (their paths are in
    the history). Columns: the table's own plus ``_key`` (the logged key) and ``_step`` (the
    history row's ``trainer/global_step``, else W&B's ``_step``).
    """
    history = load_wandb_history(run)
    frames = []
    for column in history.columns:
        if key is not None and column != key:
            continue
        for _, row in history[history[column].notna()].iterrows():
            value = row[column]
            if not isinstance(value, Mapping) or value.get("_type") != "table-file":
                continue
            table_path = Path(row["_run_file"]).parent / "files" / value["path"]
            if not table_path.exists():
                raise ArtefactError(f"{table_path}: table file of {column!r} is missing")
            content = json.loads(table_path.read_text())
            frame = pd.DataFrame(content["data"], columns=content["columns"])
            step = row.get("trainer/global_step")
            frame["_key"] = column
            frame["_step"] = step if step is not None and pd.notna(step) else row.get("_step")
            frames.append(frame)
    if not frames:
        which = f"a table {key!r}" if key else "any table"
        raise ArtefactError(f"{run}: the W&B history holds no {which}")
    return pd.concat(frames, ignore_index=True)


# -- iterative SSO ----------------------------------------------------------------------------------
def _iteration_dirs(work_dir: Path) -> list[tuple[int, Path]]:
    if not work_dir.is_dir():
        raise ArtefactError(f"{work_dir}: no such prefalign-sso work folder")
    found = []
    for path in work_dir.glob("iter_*"):
        match = re.fullmatch(r"iter_(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    if not found:
        raise ArtefactError(f"{work_dir}: no iter_<i>/ folders; is it a prefalign-sso work_dir?")
    return sorted(found)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ArtefactError(f"{path}: not valid JSON ({error})") from error


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(f"{prefix}/{k}", v))
        return out
    return {prefix: value}


def load_sso_reports(work_dir: str | Path, require_evaluated: bool = True) -> pd.DataFrame:
    """One row per iteration of a ``prefalign-sso`` run, from its ``iter_<i>/<stage>.done.json`` files.

    Columns: ``iteration``; the evaluation report as written (``samples``, ``length/chosen``,
    ``length/rejected``, ``length/original``, ``hit_max_new_tokens``, ``train/weight`` (W),
    ``train/g`` (G), ``train/rewards/*``, ``train/on_policy/*`` (e^{ā}), and ``signal_accuracy`` /
    ``signal_inverted`` / ``signal_unsure`` with a judge); the other stages' numbers prefixed
    by their stage (``allocate/fallback_rate``, ``allocate/features/<name>``,
    ``sample/new_tokens_per_second``, ``sample/dropped/<reason>``...); ``reference`` (the
    iteration's reference model, relative to the run folder when inside it); and ``stages_done``.

    Args:
        work_dir: the run's ``work_dir`` (``logs/sso/<run_name>``).
        require_evaluated: raise if an iteration has no ``evaluate.done.json`` (else its row holds
            what the finished stages wrote).
    """
    rows = []
    for i, folder in _iteration_dirs(Path(work_dir)):
        row: dict[str, Any] = {"iteration": i}
        done = []
        for stage in SSO_STAGES:
            path = folder / f"{stage}.done.json"
            if not path.exists():
                continue
            done.append(stage)
            stats = {k: v for k, v in _read_json(path).items() if k != ARTEFACTS}  # settings, file records
            if stage == "evaluate":
                row.update({k: v for k, v in stats.items() if k != "iteration"})
            elif stage == "train":  # its metrics are in the evaluation report already
                row["reference"] = stats.get("reference")
            else:
                stats = {k: v for k, v in stats.items() if k != "dropped_examples"}
                row.update(_flatten(stage, stats))
        if require_evaluated and "evaluate" not in done:
            raise ArtefactError(
                f"{folder / 'evaluate.done.json'}: iteration {i} is not evaluated (stages done: {done}); "
                "rerun prefalign-sso with the same run_name to finish it"
            )
        row["stages_done"] = done
        rows.append(row)
    return pd.DataFrame(rows)


def load_sso_samples(work_dir: str | Path) -> pd.DataFrame:
    """Every generated triple of a ``prefalign-sso`` run (``iter_<i>/preferences.jsonl``), with ``iteration``.

    Columns as written by the ``sample`` stage: ``id``, ``prompt``, ``feature``, ``chosen``,
    ``rejected``, ``original``, ``*_tokens``, ``hit_max_new_tokens`` (and the principles).
    """
    frames = []
    for i, folder in _iteration_dirs(Path(work_dir)):
        path = folder / "preferences.jsonl"
        if not path.exists():
            continue
        try:
            rows = read_jsonl(path)
        except DataError as error:
            raise ArtefactError(str(error)) from error
        frame = pd.DataFrame(rows)
        frame.insert(0, "iteration", i)
        frames.append(frame)
    if not frames:
        raise ArtefactError(f"{work_dir}: no iteration has sampled yet (no iter_<i>/preferences.jsonl)")
    return pd.concat(frames, ignore_index=True)
