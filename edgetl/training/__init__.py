"""Training: the view cache, the recipe search, the phase runner, evaluation and the run's files,
scheduled by :mod:`edgetl.training.train` over explicit state; training methods (train, distill,
adapt) in one registry (:mod:`edgetl.training.methods`)."""
