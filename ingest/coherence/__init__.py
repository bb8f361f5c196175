"""Coherence: the score of a token list (scorer) and the ingest stage that applies it."""
