"""Models: the encoder factory, checkpoints, teachers, masking and heads."""
