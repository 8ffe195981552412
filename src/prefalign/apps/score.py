"""``prefalign-score``: cache aligned-LLM scores of a dataset (one frozen model at a time).

Examples::

    prefalign-score                                   # tiny ensemble on the bundled chats
    prefalign-score aligned=paper data=ultrachat200k trainer.devices=8 trainer.strategy=ddp
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from prefalign.config import config_dir, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def score(cfg: DictConfig) -> list[dict]:
    """Score every requested split with every member the aggregation uses; return a summary row each."""
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
            )
            if table is None:  # a non-zero rank of a multi-process run
                continue
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
    for row in rows:
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
