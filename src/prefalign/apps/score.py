"""``prefalign-score``: cache aligned-LLM scores of a dataset (one frozen model at a time).

Examples::

    prefalign-score                                   # tiny ensemble on the bundled chats
    prefalign-score aligned=paper data=ultrachat200k trainer.devices=8 trainer.strategy=ddp
    srun --ntasks=16 prefalign-score aligned=paper data=ultrachat200k   # 2 nodes x 8 GPUs

With several devices every rank scores its shards of each (split, member) once and reads the
finished tables (:mod:`prefalign.scoring.engine`); only rank 0 logs the summary. Two jobs scoring
the same data and model at once share the cache: one scores, the other waits (``lock_timeout``).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from prefalign.config import config_dir, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def score(cfg: DictConfig) -> list[dict]:
    """Score every requested split with every member the aggregation uses; return a summary row each (every rank)."""
    # imported here, not at the top: the app's --help / --cfg job never load torch or datasets
    from prefalign.data.datamodule import DataSource, load_conversations
    from prefalign.data.records import ColumnMap
    from prefalign.scoring.aligned import members_used
    from prefalign.scoring.engine import score_conversations

    aligned = OmegaConf.to_container(cfg.aligned, resolve=True)
    columns = ColumnMap.from_config(OmegaConf.to_container(cfg.data.columns, resolve=True))
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    rows = []
    for split in cfg.splits:
        source_cfg = cfg.data.get(split)
        if source_cfg is None:
            raise ValueError(f"splits: the data config has no `{split}` source")
        source = DataSource.from_config(OmegaConf.to_container(source_cfg, resolve=True))
        noise = OmegaConf.to_container(cfg.data.noise, resolve=True) if cfg.data.get("noise") else None
        ds, _ = load_conversations(
            source, columns, cfg.data.on_invalid, cfg.data.get("num_proc"), split, noise
        )
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
    import torch.distributed as dist  # here, not at the top: --help / --cfg job never load torch

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    for row in rows if rank == 0 else []:
        log.info(
            "%(split)-6s %(member)-14s scored=%(scored)d dropped=%(dropped)d mean r=%(mean_score).4f "
            "cache_hit=%(cache_hit)s %(path)s",
            row,
        )
    return rows


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="score")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    score(cfg)


if __name__ == "__main__":
    main()
