"""Photos in: sources, verification, the observation-grouped split, the manifest and datasets."""
