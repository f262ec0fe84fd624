"""Research tools: the paper's experiments, accuracy curves, the affNIST-style set."""
