"""One module per pipeline stage; each exposes ``run(ctx) -> Path`` (its checkpoint)."""
