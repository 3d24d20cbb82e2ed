"""Test session setup: 8 fake CPU devices, so sharding is tested as it runs on a pod.

Must run before jax initializes its backend, hence a repo-root conftest.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
