"""Sharing atlases: self-describing bundles (export, verify, load) and Parquet trees."""
