"""Statistics over runs: bootstrap intervals over seeds and test images, paired tests against a
baseline with a multiple-comparison correction, and ranks across datasets (docs/statistics.md)."""
