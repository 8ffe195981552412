"""prefalign: quality-aware alignment objectives (PoFT, bi-PoFT, SSO, DPO, IPO, CE)."""

__version__ = "0.1.0"
