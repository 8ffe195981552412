"""Multi-stage runs: iterative SSO (and, later, PoFT -> DPO)."""
