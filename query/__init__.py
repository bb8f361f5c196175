"""Reading an atlas: SQL, concept search, tracing, cards, export and load."""
