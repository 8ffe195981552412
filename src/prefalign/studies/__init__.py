"""What the CPU-scale studies of ``experiments/`` share: the study runner (:mod:`.runner`) and the
verifiable-world stages several studies use (:mod:`.verifiable`)."""
