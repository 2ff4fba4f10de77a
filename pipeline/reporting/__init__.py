"""Pages and tables about runs: the report's sections, plots, error analysis, the experiments table."""
