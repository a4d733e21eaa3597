"""Training: checkpoints and resume for ``specc train``."""
