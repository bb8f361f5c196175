"""The ingest job: load a model, decompose its weights, project, and publish a store."""
