"""Test session setup: 8 fake CPU devices, so sharding is tested as it runs on a pod.

Must run before jax initializes its backend, hence a repo-root conftest. Tests spend
most of their time compiling tiny programs; XLA's backend optimization level 0
compiles them ~3x faster and computes the same numbers within the tests' tolerances.
"""
import os

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
