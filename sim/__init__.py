"""The bank-test simulator: a seeded workload with faults over the real stack, checked against a model."""
