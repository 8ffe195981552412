"""Command line of the verifiable world: writes JSON-lines splits into a folder.

python -m prefalign.worlds.verifiable world OUT --train 4000 --val 200 --test 500
python -m prefalign.worlds.verifiable principled OUT --principles src/prefalign/data/bundled/principles_correctness.yaml
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from prefalign.worlds.verifiable.principled import write_principled
from prefalign.worlds.verifiable.tasks import FAMILIES
from prefalign.worlds.verifiable.world import write_world


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line), write the requested files, print their paths."""
    parser = argparse.ArgumentParser(
        prog="python -m prefalign.worlds.verifiable", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    world = sub.add_parser("world", help="train/val/test conversations")
    world.add_argument("out_dir")
    world.add_argument("--train", type=int, default=4000)
    world.add_argument("--val", type=int, default=200)
    world.add_argument("--test", type=int, default=500)
    world.add_argument("--multi-turn-rate", type=float, default=0.2)
    principled = sub.add_parser("principled", help="principle-conditioned SFT splits and SSO prompts")
    principled.add_argument("out_dir")
    principled.add_argument("--principles", required=True)
    principled.add_argument("--train", type=int, default=4000)
    principled.add_argument("--val", type=int, default=200)
    principled.add_argument("--test", type=int, default=300)
    principled.add_argument("--prompts", type=int, default=600)
    principled.add_argument("--none-correct-rate", type=float, default=0.5)
    for p in (world, principled):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--families", nargs="+", default=None, choices=sorted(FAMILIES))
    args = parser.parse_args(argv)
    if args.command == "world":
        paths = write_world(
            args.out_dir, args.train, args.val, args.test, args.seed, args.families, args.multi_turn_rate
        )
    else:
        paths = write_principled(
            args.out_dir,
            args.principles,
            args.train,
            args.val,
            args.test,
            args.prompts,
            args.seed,
            args.none_correct_rate,
            args.families,
        )
    for name, path in paths.items():
        print(f"{name}: {path}")
