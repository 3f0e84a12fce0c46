"""What a tracking URI names and whether that store can be used: shared by the sweep and the analysis."""
