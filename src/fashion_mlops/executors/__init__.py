"""Where a sweep's grid cells run besides this process and its local workers (sweep.py): a Ray cluster."""
