"""Small shared utilities (atomic I/O, hashing, devices, seeding)."""
