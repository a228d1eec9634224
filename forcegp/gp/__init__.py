"""The model's mathematics: one exact GP, its basis blocks, likelihoods, posterior and
prediction (docs/method.md)."""
