"""The trained network in use, after training: `alexnet predict` (predict.py), `alexnet export`
(export.py), fc7 features and their nearest neighbours (features.py, neighbours.py) and the model's
layer table (summary.py)."""
