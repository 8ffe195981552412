"""Create the prefalign W&B dashboard (a saved workspace view) described in notebooks/wandb_dashboard.md.

Needs the `dashboard` extra (``pip install -e ".[dashboard]"``: wandb-workspaces), an API key and
network access to save; nothing touches the network before ``Workspace.save()``.

    python -m prefalign.apps.wandb_dashboard --entity <entity> --project prefalign          # create it
    python -m prefalign.apps.wandb_dashboard --dry-run                                      # list panels only

``--dry-run`` builds the workspace objects offline and prints the sections, panels and metric keys.
"""

from __future__ import annotations

import argparse
import os
import sys

# (section, [(panel title, kind, keys)]): kind "line" (keys against trainer/global_step),
# "line-iteration" (against `iteration`) or "table". The doc lists the same panels.
LAYOUT: list[tuple[str, list[tuple[str, str, list[str]]]]] = [
    (
        "Losses",
        [
            ("loss", "line", ["train/loss", "val/loss"]),
            ("CE (common measure of CE and PoFT runs)", "line", ["train/ce", "val/ce"]),
            ("learning rate", "line", ["train/lr"]),
        ],
    ),
    (
        "PoFT: soft filter",
        [
            ("tau = sigmoid(r_agg - r_theta)", "line", ["train/tau", "val/tau", "train/tau_std"]),
            ("margin r_theta - r_agg", "line", ["train/margin", "val/margin", "train/margin_std"]),
            ("r_theta vs r_agg", "line", ["train/r_theta", "train/r_agg", "val/r_theta", "val/r_agg"]),
            ("tau on clean vs noise samples", "line", ["train/tau_clean", "train/tau_noise"]),
            ("tau histograms", "line", ["train/tau_hist"]),
            ("margin histograms", "line", ["train/margin_hist"]),
        ],
    ),
    (
        "Held-out generations",
        [("exact match per epoch", "line", ["val/exact_match", "val/no_answer"])],
    ),
    (
        "PoFT: data",
        [
            ("aligned scores of the training split", "line", ["data/aligned_score_hist"]),
            ("clean vs noise", "line", ["data/aligned_score_clean_hist", "data/aligned_score_noise_hist"]),
            ("sample counts", "line", ["data/train_samples", "data/val_samples"]),
            ("samples", "table", ["train/samples"]),
        ],
    ),
    (
        "Preference objectives (DPO / IPO / SSO / reward model)",
        [
            ("reward margins", "line", ["train/rewards/margins", "val/rewards/margins"]),
            ("reward accuracies", "line", ["train/rewards/accuracies", "val/rewards/accuracies"]),
            ("policy log-probs", "line", ["train/logps/chosen", "train/logps/rejected"]),
            (
                "IPO per-token rewards",
                "line",
                ["train/rewards_per_token/margins", "val/rewards_per_token/margins"],
            ),
            ("SSO W and G", "line", ["train/weight", "train/g", "train/g_steer", "train/g_guard"]),
            ("SSO on-policy e^a", "line", ["train/on_policy/chosen", "train/on_policy/rejected"]),
        ],
    ),
    (
        "SSO pipeline (per iteration)",
        [
            ("signal accuracy", "line-iteration", ["sso/signal_accuracy", "sso/signal_unsure"]),
            (
                "generation lengths",
                "line-iteration",
                ["sso/length/chosen", "sso/length/rejected", "sso/length/original"],
            ),
            ("W and G", "line-iteration", ["sso/train/weight", "sso/train/g"]),
        ],
    ),
]


def build_workspace(entity: str, project: str, name: str):
    """The workspace view (``wandb_workspaces.workspaces.Workspace``), built offline."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = []
    for section, panels in LAYOUT:
        built = []
        for title, kind, keys in panels:
            if kind == "table":
                built.append(wr.WeavePanelSummaryTable(table_name=keys[0]))
            else:
                x = "iteration" if kind == "line-iteration" else "trainer/global_step"
                built.append(wr.LinePlot(title=title, x=x, y=list(keys)))
        sections.append(ws.Section(name=section, panels=built, is_open=True))
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"), help="W&B entity (team or user)")
    parser.add_argument("--project", default="prefalign", help="W&B project")
    parser.add_argument("--name", default="prefalign: PoFT and SSO", help="name of the saved view")
    parser.add_argument(
        "--dry-run", action="store_true", help="build offline and list the panels; save nothing"
    )
    args = parser.parse_args(argv)
    try:
        workspace = build_workspace(args.entity or "<entity>", args.project, args.name)
    except ImportError:
        print('wandb-workspaces is not installed: pip install -e ".[dashboard]"', file=sys.stderr)
        return 2
    for section in workspace.sections:
        print(f"[{section.name}]")
        for panel in section.panels:
            keys = getattr(panel, "y", None) or [getattr(panel, "table_name", "")]
            print(f"  {getattr(panel, 'title', None) or type(panel).__name__}: {', '.join(map(str, keys))}")
    if args.dry_run:
        return 0
    if not args.entity:
        print("--entity (or WANDB_ENTITY) is needed to save the view", file=sys.stderr)
        return 2
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        print(f"WANDB_MODE={os.environ['WANDB_MODE']}: not saving (needs network)", file=sys.stderr)
        return 2
    workspace.save()
    print(f"saved: {workspace.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
