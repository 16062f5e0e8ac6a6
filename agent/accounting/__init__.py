"""Energy accounting: counters, interval/daily/monthly statistics, standard coal, manual entries."""
