"""Video data: list files and datasets, transforms, video I/O, optical flow, the synthetic benchmark."""
