"""The driver's side of `alexnet train`: the checks before any worker starts (preflight.py,
resources.py, autoscaler.py), the TorchTrainer and its configs (launch.py), which failures Ray Train
may retry (failures.py) and the console while the run trains (progress.py)."""
