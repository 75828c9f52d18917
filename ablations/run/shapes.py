"""What a run's dataset is before any image is read: its image shape (C, H, W) and the size of each split.
No torch: the spec checks and the run store read them."""
SHAPES = {"fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
SIZES = {"fashion_mnist": {"train": 60000, "test": 10000}, "cifar10": {"train": 50000, "test": 10000}}
