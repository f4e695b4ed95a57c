"""BayChat wire protocol v1: frames, codec, error and close codes. No I/O lives here."""
