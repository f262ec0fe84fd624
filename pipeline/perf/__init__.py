"""Speed: the machine, precision=auto, the formulation probe, timers, benchmarks, profiles."""
