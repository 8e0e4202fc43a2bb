"""What the tests build their inputs with, apart from the tests: the suite's photographs (photos.py),
ImageNet-shaped trees made of them (imagenet_trees.py) and a Ray cluster with a real autoscaler
(autoscaling_cluster.py). tests/conftest.py holds the session's fixtures (one Ray head, one S3 server)."""
