"""Pipeline: wires the data, synthesis and segmentation stages; config, caching and the CLI. No model code."""
