"""What a run is measured by: probes, tables, plots, published reference scores, benchmarks."""
