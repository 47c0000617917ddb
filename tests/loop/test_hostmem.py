"""config.host_memory (experiments/hostmem.py): the loop's host allocator setting applies where
the C library is glibc, and a bad value is named at parsing, before anything is made."""

import platform

import pytest

from experiments import hostmem, train
from tests.helpers import tiny_retrieval_config


@pytest.mark.fast
def test_host_memory_applies_on_glibc_and_bad_values_are_named():
  on_glibc = platform.libc_ver()[0] == "glibc"
  assert hostmem.use("keep") is on_glibc
  assert hostmem.use("system") is on_glibc
  hostmem.use("keep")                  # the loop's default, for the rest of this process
  with pytest.raises(ValueError, match=r"Unknown config.host_memory 'fast'; valid choices: "
                                       r"keep, system"):
    train.validate(tiny_retrieval_config(host_memory="fast"))
