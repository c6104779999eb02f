"""Target presets live as JSON files in this folder; compiler/targets.py reads them."""
