"""Data: the schema, validated loading, the synthetic market, examples, splits and batches."""
