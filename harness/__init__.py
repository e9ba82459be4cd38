"""RegionContrast benchmarking harness."""
