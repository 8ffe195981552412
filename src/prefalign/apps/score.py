"""``prefalign-score``: cache aligned-LLM scores of a dataset (one frozen model at a time).

Examples::

    prefalign-score                                   # tiny ensemble on the bundled chats
    prefalign-score aligned=paper data=ultrachat200k trainer.devices=8 trainer.strategy=ddp
    prefalign-score export.dir=scored export.format=hf   # also write the scored data (see below)
    srun --ntasks=16 prefalign-score aligned=paper data=ultrachat200k   # 2 nodes x 8 GPUs

With several devices every rank scores its shards of each (split, member) once and reads the
finished tables (:mod:`prefalign.scoring.engine`); only rank 0 logs the summary. Two jobs scoring
the same data and model at once share the cache: one scores, the other waits (``lock_timeout``).

With ``export.dir`` set, rank 0 then writes each split's data with its score columns
(``score_<member>``, ``aligned_score``) in TRL's conversational format (``messages`` plus the
scores; :func:`prefalign.data.hf_datasets.to_scored_sft`) to ``<export.dir>/<split>/``
(``save_to_disk``) and/or ``<export.dir>/<split>.jsonl``.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from prefalign.config import config_dir, register_resolvers, validate_score_config

log = logging.getLogger(__name__)
register_resolvers()


def score(cfg: DictConfig) -> list[dict]:
    """Score every requested split with every member the aggregation uses; return a summary row each
    (every rank). The config is checked first (:func:`prefalign.config.validate_score_config`)."""
    # imported here, not at the top: the app's --help / --cfg job never load torch or datasets
    from prefalign.core.ranks import world
    from prefalign.data.datamodule import DataSource, load_conversations
    from prefalign.data.records import ColumnMap
    from prefalign.scoring.aligned import members_used
    from prefalign.scoring.engine import score_conversations

    validate_score_config(cfg)  # naming the key, before any folder or cache is made
    aligned = OmegaConf.to_container(cfg.aligned, resolve=True)
    columns = ColumnMap.from_config(OmegaConf.to_container(cfg.data.columns, resolve=True))
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    rows, scored = [], {}
    for split in cfg.splits:
        source = DataSource.from_config(OmegaConf.to_container(cfg.data[split], resolve=True))
        noise = OmegaConf.to_container(cfg.data.noise, resolve=True) if cfg.data.get("noise") else None
        ds, _ = load_conversations(
            source, columns, cfg.data.on_invalid, cfg.data.get("num_proc"), split, noise
        )
        scored[split] = (ds, f"{split} ({source.path})")
        for member in members_used(aligned):
            table = score_conversations(
                ds,
                aligned["members"][member],
                max_length=int(aligned["max_length"]),
                cache_dir=aligned["cache_dir"],
                member=member,
                source=f"{split} ({source.path})",
                batch_size=int(aligned.get("batch_size", 16)),
                shard_size=int(cfg.shard_size),
                trainer_kwargs=trainer_kwargs,
                lock_timeout=cfg.get("lock_timeout"),
            )
            means = list(table.mean_by_id().values())
            rows.append(
                {
                    "split": split,
                    "member": member,
                    "scored": len(table.table),
                    "dropped": table.drops.dropped,
                    "mean_score": sum(means) / len(means),
                    "cache_hit": table.cache_hit,
                    "path": str(table.path),
                }
            )
    rank = world()[0]
    for row in rows if rank == 0 else []:
        log.info(
            "%(split)-6s %(member)-14s scored=%(scored)d dropped=%(dropped)d mean r=%(mean_score).4f "
            "cache_hit=%(cache_hit)s %(path)s",
            row,
        )
    if rank == 0 and OmegaConf.select(cfg, "export.dir", default=None):
        export_scored(cfg, aligned, scored)
    return rows


def export_scored(cfg: DictConfig, aligned: dict, scored: dict) -> dict[str, dict]:
    """Write every scored split with its score columns (``export.dir``, relative to ``paths.root_dir``
    like every other output; ``export.format``); returns
    the written paths per split. The scores are read back from the cache just written, and combined
    as training combines them (:func:`prefalign.scoring.frozen.aligned_score_columns`)."""
    from pathlib import Path

    from prefalign.data.hf_datasets import save, to_scored_sft
    from prefalign.scoring.frozen import aligned_score_columns

    fmt = str(cfg.export.get("format", "hf"))
    written = {}
    for split, (ds, source) in scored.items():
        columns, _ = aligned_score_columns(ds, {**aligned, "score_missing": False}, source)
        rows = to_scored_sft(ds, columns, source)
        # a relative export.dir lies under paths.root_dir ($PREFALIGN_ROOT), as every other output
        written[split] = save(rows, Path(cfg.paths.root_dir) / cfg.export.dir / split, fmt, source=source)
    return written


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="score")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    score(cfg)


if __name__ == "__main__":
    main()
