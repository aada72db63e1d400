"""Character cards: the model, file formats (V1/V2/V3, JSON/PNG/YAML) and the store."""
