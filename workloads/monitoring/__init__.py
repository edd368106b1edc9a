"""Model monitoring: the capture reader, the baseline, drift and quality, the reports."""
