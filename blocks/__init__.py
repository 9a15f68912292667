"""Blocks own I/O and credentials: the store backends (local directory, S3), EC2 compute."""
