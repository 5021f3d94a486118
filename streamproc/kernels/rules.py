"""Rule, event and severity codes shared by the kernels and their callers."""

RULES = (
    "threshold",
    "zscore",
    "flatline",
    "dropout",
    "neighbour",
    "rate",
    "hampel",
    "cusum",
    "seasonal",
    "level",
)
(
    R_THRESHOLD,
    R_ZSCORE,
    R_FLATLINE,
    R_DROPOUT,
    R_NEIGHBOUR,
    R_RATE,
    R_HAMPEL,
    R_CUSUM,
    R_SEASONAL,
    R_LEVEL,
) = range(len(RULES))
N_RULES = len(RULES)

EV_OPEN, EV_UPDATE, EV_RESOLVE = 1, 2, 3

SEVERITIES = ("info", "warning", "critical")
SEV_INFO, SEV_WARNING, SEV_CRITICAL = range(len(SEVERITIES))

# alert state per (channel, rule)
ST_IDLE, ST_PENDING, ST_OPEN = 0, 1, 2
