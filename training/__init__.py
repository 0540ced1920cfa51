"""Training of fer_edge models (needs the ``train`` extra: torch, imbalanced-learn, scikit-learn)."""
