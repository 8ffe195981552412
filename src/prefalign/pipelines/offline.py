"""The SSO paper's offline preference dataset (appendix A.1.4) from the pairs of iterative SSO runs,
for ``prefalign-build-offline``: read the pairs, checking the files the runs' stage markers
recorded (:func:`read_pairs`), then filter them (:func:`build`)."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from prefalign.core.errors import ConfigError, DataError
from prefalign.core.jsonl import iter_jsonl, write_json, write_jsonl
from prefalign.data.hf_datasets import export_preferences
from prefalign.data.offline_builder import build_offline_dataset
from prefalign.pipelines.artefacts import check_recorded_outputs

log = logging.getLogger(__name__)
REQUIRED = ("id", "prompt", "chosen", "rejected")


def read_pairs(patterns: list[str]) -> list[dict]:
    """Every preference pair of the files matching ``patterns``, checked for the fields the builder reads.

    In the folders of a ``prefalign-sso`` run (``iter_<i>/``), the files that a finished stage
    recorded in its ``done`` marker must be there, whole and unchanged: a deleted, cut or edited
    ``preferences.jsonl`` is an error naming it (never one file fewer read silently).
    """
    files = sorted({f for pattern in patterns for f in glob.glob(pattern)})
    if not files:
        raise ConfigError(f"config key `inputs`: no file matches {patterns}")
    problems = []
    for pattern in patterns:
        folders, name = os.path.split(pattern)
        for folder in sorted(glob.glob(folders or ".")):
            problems += check_recorded_outputs(folder, name)
    if problems:
        raise DataError(
            "config key `inputs`: the SSO run's recorded artefacts differ: "
            + "; ".join(dict.fromkeys(problems))
            + " (rerun prefalign-sso with the same run_name and resume.force=true to redo them)"
        )
    rows = []
    for file in files:
        for line_no, row in iter_jsonl(file):
            missing = [k for k in REQUIRED if not isinstance(row.get(k), (str, list)) or not row.get(k)]
            if missing:
                raise DataError(f"{file}: line {line_no} (id={row.get('id')}): missing or empty {missing}")
            rows.append(row)
    log.info("read %d pairs from %d file(s)", len(rows), len(files))
    return rows


def build(cfg: DictConfig) -> dict:
    """Build the dataset; returns the report (also written next to the output)."""
    rows = read_pairs(list(cfg.inputs))
    judges = [hydra.utils.instantiate(j) for j in cfg.judges]
    kept, report = build_offline_dataset(
        rows, judges, int(cfg.max_char_diff), bool(cfg.remove_unsure), int(cfg.seed)
    )
    output = Path(cfg.output)
    write_jsonl(output, kept)
    exports = export_preferences(output, kept)  # TRL's conversational format, beside the output
    summary = {
        "remaining": report.remaining,
        "dropped": dict(report.drops.counts),
        "judges": len(judges),
        "inputs": OmegaConf.to_container(cfg.inputs, resolve=True),
        "output": str(output),
        "exports": {fmt: str(path) for fmt, path in exports.items()},
    }
    write_json(output.with_suffix(".report.json"), summary)
    log.info("kept %d of %d pairs -> %s; %s", len(kept), len(rows), output, report.drops.summary("removed"))
    return summary
