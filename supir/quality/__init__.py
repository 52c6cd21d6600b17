"""Quality: synthetic degradations, metrics and the benchmark."""
