"""Instruction prompts from chat data: the first user turn of each conversation.

The SSO pipeline (``prefalign-sso``) reads a prompt set (``id``, ``prompt``); a chat data config
(e.g. ``data=sharegpt_v3``) gives whole conversations. :func:`first_turn_prompts` loads a source
with the same recipe as training and scoring (:func:`prefalign.data.datamodule.load_conversations`:
validation, English filter, ``limit``) and keeps each conversation's first user turn; every
conversation that gives no prompt is counted in the returned report.
"""

from __future__ import annotations

from prefalign.core.errors import DropReport
from prefalign.core.names import ID, MESSAGES
from prefalign.data.datamodule import DataSource, load_conversations
from prefalign.data.records import ColumnMap


def first_turn_prompts(
    source: DataSource, columns: ColumnMap, on_invalid: str = "raise", num_proc: int | None = None
) -> tuple[list[dict[str, str]], DropReport]:
    """``{"id", "prompt"}`` rows: the first user turn of every conversation of ``source``.

    A system message before the first user turn is not part of the prompt (the pipeline sets its
    own). A conversation with an empty (whitespace-only) user turn is a bad record of the loader
    (``empty_user_message``: an error naming the row, or with ``on_invalid="drop"`` dropped and
    counted); every record the loader drops is counted under its reason.

    Returns:
        The rows, in the source's order, and the report of what was dropped (``total``: the
        records read).
    """
    ds, report = load_conversations(source, columns, on_invalid, num_proc)
    rows = []
    for sample_id, messages in zip(ds[ID], ds[MESSAGES], strict=True):
        first = next(m["content"] for m in messages if m["role"] == "user")  # validated: not empty
        rows.append({ID: str(sample_id), "prompt": first})
    return rows, report
