"""Agreement and accuracy statistics on a long-format rating table (pure numpy + krippendorff).

The CLI (`sonoaudit agreement`), the raters service and the report all call these functions."""

from sonoaudit_raters.stats.agreement import agreement, pairwise_kappa, public
from sonoaudit_raters.stats.bootstrap import DEFAULT_N_BOOT, Estimate, difference
from sonoaudit_raters.stats.table import RatingTable, RatingTableError, from_long

__all__ = [
    "DEFAULT_N_BOOT",
    "Estimate",
    "RatingTable",
    "RatingTableError",
    "agreement",
    "difference",
    "from_long",
    "pairwise_kappa",
    "public",
]
