"""``python -m prefalign.worlds.verifiable world|principled OUT ...`` (see :mod:`.cli`)."""

from prefalign.worlds.verifiable.cli import main

main()
