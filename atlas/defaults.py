"""Defaults shared by the CLI and the ingest job (kept import-light for the CLI)."""

DEFAULT_TOP_K = 20
# Relative singular-value gap (to sigma_max) below which a direction is flagged degenerate.
# A singular vector turns by about |E| / gap under a perturbation E (Wedin's theorem); below
# 1e-4 sigma_max, perturbations as small as half-precision rounding of the weights can turn it
# by order one, so only its group's span means something.
DEFAULT_GAP_TOLERANCE = 1e-4
