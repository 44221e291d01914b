"""Test doubles for hardware: a fake libnvidia-ml.so.1 (C, built with gcc) and fake sysfs trees."""
