"""The Hydra entry points (``prefalign-*`` commands): compose the config, validate it, call the
library. Nothing below this package imports it."""
