"""CLI commands, one module per area; `atlas.cli` registers their COMMANDS."""
