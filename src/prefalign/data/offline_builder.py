"""The SSO paper's offline preference dataset builder (appendix A.1.4).

From the preference pairs generated during iterative runs: (1) remove duplicates and pairs whose
chosen and rejected responses differ in length by more than ``max_char_diff`` characters (3000);
(2) LLM-as-judge: with the Table 15 prompt, each judge sees both orders, and a pair is removed when
any judge prefers the rejected response (with ``remove_unsure``, also when a judge's two orders
disagree); (3) length balancing: one pair per query, and as many pairs whose chosen response is
longer as pairs whose chosen response is shorter. Every removal is counted by reason.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from prefalign.core.errors import DropReport


@dataclass
class BuildReport:
    """Pairs left after each step, and what each step removed (by reason, with example ids)."""

    remaining: dict[str, int] = field(default_factory=dict)
    drops: DropReport = field(default_factory=DropReport)


def _prompt_key(row: dict) -> str:
    """The query of a pair: its prompt text, or the JSON text of a prompt conversation."""
    prompt = row["prompt"]
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _key(row: dict) -> tuple[str, str, str]:
    return _prompt_key(row), row["chosen"], row["rejected"]


def build_offline_dataset(
    rows: Sequence[dict],
    judges: Sequence = (),
    max_char_diff: int = 3000,
    remove_unsure: bool = True,
    seed: int = 0,
) -> tuple[list[dict], BuildReport]:
    """Filter preference pairs (``id``, ``prompt``, ``chosen``, ``rejected``) as in appendix A.1.4.

    Args:
        judges: objects with ``judge_many([(prompt, a, b), ...]) -> ["a" | "b" | None, ...]`` that
            ask both orders (e.g. :class:`prefalign.generation.judges.LLMJudge`); a = chosen.
        max_char_diff: largest allowed |len(chosen) - len(rejected)| in characters.
        remove_unsure: also remove pairs on which a judge's two orders disagree.
        seed: seed of the choice of one pair per query and of the length balancing.
    """
    report = BuildReport()
    report.drops.total = len(rows)
    report.remaining["input"] = len(rows)
    seen, kept = set(), []
    for row in rows:
        if _key(row) in seen:
            report.drops.add("duplicate", row["id"])
            continue
        seen.add(_key(row))
        if abs(len(row["chosen"]) - len(row["rejected"])) > max_char_diff:
            report.drops.add("length_gap", row["id"])
            continue
        kept.append(row)
    report.remaining["prefiltered"] = len(kept)

    for index, judge in enumerate(judges):
        verdicts = judge.judge_many([(r["prompt"], r["chosen"], r["rejected"]) for r in kept])
        survivors = []
        for row, verdict in zip(kept, verdicts, strict=True):
            if verdict == "b":
                report.drops.add(f"judge{index}_prefers_rejected", row["id"])
            elif verdict is None and remove_unsure:
                report.drops.add(f"judge{index}_unsure", row["id"])
            else:
                survivors.append(row)
        kept = survivors
    report.remaining["judged"] = len(kept)

    rng = random.Random(seed)
    by_prompt: dict[str, list[dict]] = {}
    for row in kept:
        by_prompt.setdefault(_prompt_key(row), []).append(row)
    one_per_query = []
    for prompt_rows in by_prompt.values():
        choice = rng.randrange(len(prompt_rows))
        one_per_query.append(prompt_rows[choice])
        for k, row in enumerate(prompt_rows):
            if k != choice:
                report.drops.add("extra_pair_for_query", row["id"])
    longer = [r for r in one_per_query if len(r["chosen"]) > len(r["rejected"])]
    shorter = [r for r in one_per_query if len(r["chosen"]) < len(r["rejected"])]
    equal = [r for r in one_per_query if len(r["chosen"]) == len(r["rejected"])]
    n = min(len(longer), len(shorter))
    rng.shuffle(longer)
    rng.shuffle(shorter)
    for row in longer[n:] + shorter[n:]:
        report.drops.add("length_balance", row["id"])
    order = {id(r): i for i, r in enumerate(rows)}
    final = sorted(longer[:n] + shorter[:n] + equal, key=lambda r: order[id(r)])
    report.remaining["balanced"] = len(final)
    return final, report
